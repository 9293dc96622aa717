"""Training throughput: Hugging Face Trainer (padded batches) vs the workbench SFT step, one process.

    python benchmarks/train_throughput.py --device cpu            # small version, this 2-core machine
    python benchmarks/train_throughput.py --device cuda --out gpu.json   # the issue's GPU workload

Both sides train the same config-initialised model on the same synthetic instruction-like data
(log-normal lengths, 40% of each example's tokens are prompt with no loss) with AdamW:
(a) ``transformers.Trainer`` with its default padded batching (16 examples padded to the longest,
SDPA attention); (b) ``workbench.finetune.train_step`` on padding-free packed rows with a
per-document mask (flex attention + torch.compile on CUDA, SDPA block-diagonal on CPU) and the
chunked lm_head + cross-entropy over loss-bearing tokens only. Throughput counts real (non-pad)
tokens per second after warm-up steps. A second phase feeds the SAME examples per optimizer step
to both (Trainer with a sequential sampler) and compares the loss curves step by step.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.finetune import SFTConfig, train_step  # noqa: E402
from workbench.packing import IGNORE, collate_packed, pack_rows, plan_epoch  # noqa: E402

WORKLOADS = {
    # the GPU workload: Qwen2.5-0.5B shape, lengths log-normal (median 260, mean ~334), max 1024
    "cuda": dict(model=dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                            tie_word_embeddings=True),
                 n_examples=4096, median=260, sigma=0.8, min_len=32, max_len=1024, batch=16,
                 token_budget=4096, micro_batch=2, steps=40, warmup=8, check_steps=20),
    # CPU: the same family at the offline tiny-llama's size and vocabulary, lengths scaled down 4x
    "cpu": dict(model=dict(vocab_size=30523, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           tie_word_embeddings=True),
                n_examples=1024, median=65, sigma=0.8, min_len=8, max_len=256, batch=16,
                token_budget=512, micro_batch=3, steps=24, warmup=4, check_steps=8),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def make_examples(w: dict, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(math.log(w["median"]), w["sigma"], w["n_examples"]), w["min_len"], w["max_len"])
    out = []
    for n in lens.astype(int):
        ids = rng.integers(100, w["model"]["vocab_size"] - 100, n).tolist()
        p = int(n * 0.4)
        out.append({"input_ids": ids, "labels": [IGNORE] * p + ids[p:]})
    return out


def make_model(w: dict, device: torch.device, dtype: torch.dtype, attn: str, seed: int = 0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(Qwen2Config(**w["model"]), attn_implementation=attn, dtype=dtype)
    return m.to(device).train()


def flops_per_token(model, w: dict, seq: float) -> float:
    """The reference's convention: 6N + 12 * layers * hidden * sequence length."""
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 12 * w["model"]["num_hidden_layers"] * w["model"]["hidden_size"] * seq


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device):
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.type == "cuda" else None


def reset_peak(device):
    gc.collect()  # the previous side's model, optimizer and Trainer must be gone before measuring this one
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --------------------------------------------------------------------------- (a) Hugging Face Trainer

def pad_collate(batch):
    """Trainer's default recipe for causal LM SFT: pad to the longest example of the batch."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    lab = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    am = torch.zeros(len(batch), width, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        lab[i, :n] = torch.tensor(b["labels"])
        am[i, :n] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": am}


def run_trainer(w, examples, device, dtype, *, steps, lr, sequential=False, log_every_step=False):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = make_model(w, device, dtype, "sdpa")
    real, shapes = [], []  # non-pad tokens of each forward pass (device tensors: no sync), and its padded size
    model.register_forward_pre_hook(
        lambda m, a, kw: (real.append(kw["attention_mask"].sum()), shapes.append(kw["attention_mask"].numel())),
        with_kwargs=True)

    class Clock(TrainerCallback):
        def __init__(self):
            self.t, self.losses = [], []

        def on_step_begin(self, args, state, control, **kw):
            sync(device)
            self.t.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    clock = Clock()
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-trainer-"), per_device_train_batch_size=w["batch"], max_steps=steps,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1 if log_every_step else 10 ** 6, save_strategy="no", report_to=[], disable_tqdm=True,
        optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch", bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu", dataloader_num_workers=2 if device.type == "cuda" else 0,
        remove_unused_columns=False, seed=0, train_sampling_strategy="sequential" if sequential else "random")
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=pad_collate, callbacks=[clock])
    reset_peak(device)
    trainer.train()
    sync(device)
    end = time.perf_counter()
    warm = w["warmup"]
    timed_real = float(torch.stack(real[warm:steps]).sum()) if steps > warm else 0.0
    total = sum(len(e["input_ids"]) for e in examples)
    out = {"real_tok_s": timed_real / (end - clock.t[warm]) if steps > warm else None, "peak_gb": peak_gb(device),
           "losses": clock.losses, "mean_len": total / len(examples),
           "padding_fraction": 1 - float(torch.stack(real).sum()) / sum(shapes)}
    del trainer, model
    return out


# --------------------------------------------------------------------------- (b) the workbench step

def prepare(w, device, dtype, *, compile_):
    attn = "flex_attention" if device.type == "cuda" else "sdpa"
    model = make_model(w, device, dtype, attn)
    if compile_:
        model.get_decoder().compile(dynamic=False)
    return model


def run_workbench(w, examples, device, dtype, *, steps, lr, compile_, groups=None):
    """Throughput on the packing plan (``groups=None``), or one optimizer step per given example group."""
    model = prepare(w, device, dtype, compile_=compile_)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=device.type == "cuda")
    pad_to = w["token_budget"] if compile_ else None  # static shapes for the compiled graph
    if groups is None:  # the routine's own plan: shuffled, packed rows, micro-batches of rows
        lengths = [len(e["input_ids"]) for e in examples]
        plan, epoch = [], 0
        while len(plan) < steps:
            plan += [[mb] for mb in plan_epoch(lengths, token_budget=w["token_budget"],
                                               micro_batch_size=w["micro_batch"], seed=0, epoch=epoch)]
            epoch += 1
    else:  # the same examples as each Trainer step, packed, all micro-batches in one optimizer step
        plan = []
        for g in groups:
            rows = [[g[i] for i in r] for r in pack_rows([len(examples[i]["input_ids"]) for i in g], w["token_budget"])]
            plan.append([rows[i:i + w["micro_batch"]] for i in range(0, len(rows), w["micro_batch"])])
    reset_peak(device)
    losses, real, pads = [], 0, 0
    t0 = None
    for s in range(steps):
        if s == w["warmup"]:
            sync(device)
            t0 = time.perf_counter()
        batches = [collate_packed(examples, rows, pad_id=0, pad_to=pad_to, pin_memory=device.type == "cuda")
                   for rows in plan[s]]
        loss, _ = train_step(model, batches, opt, max_grad_norm=1.0)
        losses.append(loss)
        if s >= w["warmup"]:
            real += sum(b.n_real for b in batches)
            pads += sum(b.n_pad for b in batches)
    sync(device)
    end = time.perf_counter()
    out = {"real_tok_s": real / (end - t0) if t0 else None, "peak_gb": peak_gb(device),
           "losses": [float(x) for x in losses], "padding_fraction": pads / max(1, real + pads)}
    del model, opt
    return out


# --------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, help="timed + warm-up optimizer steps per side (default per device)")
    ap.add_argument("--no-compile", action="store_true", help="CUDA: run the workbench step eagerly")
    ap.add_argument("--threads", type=int, default=SFTConfig().threads,
                    help="torch intra-op threads for both sides (default: SFTConfig's, 1; 0: torch's choice)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    w = dict(WORKLOADS[args.device])
    if args.steps:
        w["steps"] = args.steps
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    compile_ = device.type == "cuda" and not args.no_compile
    examples = make_examples(w)
    lr = 1e-5 if device.type == "cuda" else 2e-3  # CPU: large enough that the loss curve visibly moves
    import transformers

    res = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine(),
           "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "workload": {k: v for k, v in w.items() if k != "model"},
           "model": w["model"], "load_average": os.getloadavg()}
    print(f"device {res['device']}, torch {res['torch']}, transformers {res['transformers']}, "
          f"threads {res['cpu_threads']}, load {res['load_average'][0]:.1f}", flush=True)
    # --- throughput: each side in its own way of batching, same data and model
    hf = run_trainer(w, examples, device, dtype, steps=w["steps"], lr=lr)
    print(f"(a) HF Trainer, padded batches of {w['batch']}: {hf['real_tok_s']:,.0f} real tokens/s, "
          f"padding {hf['padding_fraction']:.1%}, peak {hf['peak_gb']} GiB", flush=True)
    wb = run_workbench(w, examples, device, dtype, steps=w["steps"], lr=lr, compile_=compile_)
    print(f"(b) workbench packed rows of {w['token_budget']} x {w['micro_batch']}: {wb['real_tok_s']:,.0f} real "
          f"tokens/s, padding {wb['padding_fraction']:.1%}, peak {wb['peak_gb']} GiB", flush=True)
    ratio = wb["real_tok_s"] / hf["real_tok_s"]
    res["trainer"] = {k: v for k, v in hf.items() if k != "losses"}
    res["workbench"] = {k: v for k, v in wb.items() if k != "losses"}
    res["ratio"] = ratio
    probe = make_model(w, torch.device("cpu"), torch.float32, "sdpa")
    fl = flops_per_token(probe, w, hf["mean_len"])
    del probe
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in res["device"]), None) if device.type == "cuda" else None
    if peak:
        res["trainer"]["mfu"] = hf["real_tok_s"] * fl / (peak * 1e12)
        res["workbench"]["mfu"] = wb["real_tok_s"] * fl / (peak * 1e12)
    print(f"ratio workbench / Trainer: {ratio:.2f}x"
          + (f"; MFU {res['trainer']['mfu']:.1%} vs {res['workbench']['mfu']:.1%}" if peak else ""), flush=True)
    # --- correctness: the same examples per optimizer step, loss curves side by side
    n = w["check_steps"]
    groups = [list(range(i * w["batch"], (i + 1) * w["batch"])) for i in range(n)]
    ordered = [examples[i] for g in groups for i in g]
    hf_c = run_trainer(w, ordered, device, dtype, steps=n, lr=lr, sequential=True, log_every_step=True)
    wb_c = run_workbench(w, ordered, device, dtype, steps=n, lr=lr, compile_=compile_,
                         groups=[list(range(i * w["batch"], (i + 1) * w["batch"])) for i in range(n)])
    rel = [abs(a - b) / abs(b) for a, b in zip(wb_c["losses"], hf_c["losses"])]
    res["loss_check"] = {"steps": n, "trainer": hf_c["losses"], "workbench": wb_c["losses"],
                         "max_relative_diff": max(rel), "within_1pct": max(rel) < 0.01}
    print(f"loss curves on the same {n} batches: max relative difference {max(rel):.2e} "
          f"({'within' if max(rel) < 0.01 else 'NOT within'} 1%)", flush=True)
    print("  trainer  :", " ".join(f"{x:.4f}" for x in hf_c["losses"]))
    print("  workbench:", " ".join(f"{x:.4f}" for x in wb_c["losses"]))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
