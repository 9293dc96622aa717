"""Training throughput: Hugging Face Trainer (padded batches) vs the workbench SFT step, one process.

    python benchmarks/train_throughput.py --device cpu                       # small version, this 2-core machine
    python benchmarks/train_throughput.py --device cpu --gpu-config-smoke    # the CUDA configuration, tiny, on CPU
    python benchmarks/train_throughput.py --device cuda --out gpu.json       # the issue's GPU workload

Both sides train the same config-initialised model on the same synthetic instruction-like data
(log-normal lengths, 40% of each example's tokens are prompt with no loss) with AdamW:
(a) ``transformers.Trainer`` with its default padded batching (16 examples padded to the longest,
SDPA attention); (b) ``workbench.finetune.train_step`` on padding-free packed rows with a
per-document mask (flex attention + torch.compile on CUDA, SDPA block-diagonal on CPU) and the
chunked lm_head + cross-entropy over loss-bearing tokens only, batches collated ahead in a
background thread. Throughput counts real (non-pad) tokens per second after warm-up steps. A third
phase (``losscheck``) feeds the SAME examples per optimizer step to both (Trainer with a sequential
sampler) and compares the loss curves step by step; its examples have the same lengths but token ids
drawn from a Zipf law (``check_zipf``) at a higher learning rate (``check_lr``), so the curves fall
(optimizer steps that matter) instead of sitting at ln(vocabulary) as uniform ids leave them.

Made for a single GPU session: ``--max-seconds`` bounds the whole run (step loops stop early and
report what they measured), each phase's figures are printed and written to ``--out`` as soon as
they exist, a phase that fails (out of memory, compile error) is recorded and the others still run,
and ``--only`` runs phases separately. ``--gpu-config-smoke`` runs the CUDA configuration (Qwen2
architecture, bf16 weights, flex attention with the document BlockMask, the compiled decoder with
static shapes, fused AdamW) at a tiny width: on CPU flex attention trains through its math
reference (``packing.flex_reference_backward``) and the decoder compiles with ``aot_eager``.
Flex attention's kernel tiles follow the routine's default (``SFTConfig.flex_kernel_options="auto"``:
tiles measured on an H100) unless ``--flex-kernel-options`` names others (``benchmarks/flex_configs.py``
finds them for a card); tiles whose kernel fails are replaced by torch's defaults and the run goes on.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.finetune import SFTConfig, train_step  # noqa: E402
from workbench.packing import (IGNORE, Prefetcher, collate_packed, flex_reference_backward, pack_rows,  # noqa: E402
                               plan_epoch)
from workbench.packing import flex_kernel_options as packing_kernel_options  # noqa: E402

QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
WORKLOADS = {
    # the GPU workload: Qwen2.5-0.5B shape, lengths log-normal (median 260, mean ~334), max 1024.
    # 4 rows x 4096 tokens per step: the reference's 16,384 tokens per optimizer step
    "cuda": dict(model=QWEN05, n_examples=4096, median=260, sigma=0.8, min_len=32, max_len=1024, batch=16,
                 token_budget=4096, micro_batch=4, steps=40, warmup=8, check_steps=20, lr=1e-5,
                 check_lr=3e-4, check_zipf=1.2, dtype="bf16", attn="flex_attention", compile=True, loss_chunk=4096),
    # CPU: the same family at the offline tiny-llama's size and vocabulary, lengths scaled down 4x
    "cpu": dict(model=dict(vocab_size=30523, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           tie_word_embeddings=True),
                n_examples=1024, median=65, sigma=0.8, min_len=8, max_len=256, batch=16,
                token_budget=512, micro_batch=3, steps=24, warmup=4, check_steps=8, lr=2e-3,
                check_lr=2e-3, check_zipf=1.2, dtype="fp32", attn="sdpa", compile=False, loss_chunk=4096),
    # --gpu-config-smoke: the CUDA configuration (0.5B architecture: 14 heads / 2 KV heads, tied embeddings,
    # bf16, flex + compile + fused AdamW) at a tiny width, vocabulary and length; seconds on CPU
    "smoke": dict(model=dict(QWEN05, vocab_size=4096, hidden_size=112, intermediate_size=224, num_hidden_layers=2,
                             max_position_embeddings=1024),
                  n_examples=128, median=40, sigma=0.8, min_len=8, max_len=128, batch=8,
                  token_budget=256, micro_batch=2, steps=6, warmup=2, check_steps=3, lr=1e-3,
                  check_lr=1e-3, check_zipf=1.2, dtype="bf16", attn="flex_attention", compile=True, loss_chunk=512),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
PHASES = ("trainer", "workbench", "losscheck")


class Budget:
    """Wall-clock budget of the whole run: loops ask ``left()`` and stop early when it runs out."""

    def __init__(self, seconds: float | None):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return math.inf if not self.seconds else self.seconds - (time.perf_counter() - self.t0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def make_examples(w: dict, seed: int = 0, zipf: float | None = None) -> list[dict]:
    """Token ids uniform over the vocabulary (the throughput workload, as the reference's), or with
    ``zipf`` drawn from a Zipf law (a skewed, learnable unigram distribution like text's: the loss check's
    curves then fall instead of sitting at ln(vocabulary)). Lengths are the same for the same seed."""
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(math.log(w["median"]), w["sigma"], w["n_examples"]), w["min_len"], w["max_len"])
    ids_rng = np.random.default_rng(seed + 1)
    hi = w["model"]["vocab_size"] - 100
    out = []
    for n in lens.astype(int):
        if zipf:
            ids = np.minimum(100 + ids_rng.zipf(zipf, n) - 1, hi - 1).tolist()
        else:
            ids = rng.integers(100, hi, n).tolist()
        p = int(n * 0.4)
        out.append({"input_ids": ids, "labels": [IGNORE] * p + ids[p:]})
    return out


def make_model(w: dict, device: torch.device, dtype: torch.dtype, attn: str, seed: int = 0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(Qwen2Config(**w["model"]), attn_implementation=attn, dtype=dtype)
    return m.to(device).train()


def n_params(w: dict) -> int:
    """Parameters of the workload's model (tied embeddings counted once), counted on the meta device."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(Qwen2Config(**w["model"]))
    return sum(p.numel() for p in m.parameters())


def flops_per_token(w: dict, seq: float) -> float:
    """The reference's convention: 6N + 12 * layers * hidden * sequence length."""
    c = w["model"]
    return 6 * n_params(w) + 12 * c["num_hidden_layers"] * c["hidden_size"] * seq


def host_cpu() -> str:
    """The host's CPU model and core count: the Trainer's padded eager step is host-bound, so its figure
    follows the machine (docs/benchmarks.md)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


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


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


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


def run_trainer(w, examples, device, dtype, *, steps, lr, budget, sequential=False, log_every_step=False):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = make_model(w, device, dtype, "sdpa")
    real, shapes = [], []  # non-pad tokens of each forward pass (device tensors: no sync), and its padded size

    def count(module, args, kwargs):  # must return None: a returned tuple would replace the call's arguments
        real.append(kwargs["attention_mask"].sum())
        shapes.append(kwargs["attention_mask"].numel())

    model.register_forward_pre_hook(count, with_kwargs=True)

    class Clock(TrainerCallback):
        def __init__(self):
            self.t, self.losses = [], []

        def on_step_begin(self, args, state, control, **kw):
            sync(device)
            self.t.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if budget.left() < 0:  # out of time: end training after this step, report what was measured
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    clock = Clock()
    fused = device.type == "cuda" or dtype == torch.bfloat16  # the smoke runs the CUDA recipe on CPU
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-trainer-"), per_device_train_batch_size=w["batch"], max_steps=steps,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1 if log_every_step else 10 ** 6, save_strategy="no", report_to=[], disable_tqdm=True,
        optim="adamw_torch_fused" if fused else "adamw_torch", bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu", dataloader_num_workers=2 if device.type == "cuda" else 0,
        remove_unused_columns=False, seed=0, train_sampling_strategy="sequential" if sequential else "random")
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=pad_collate, callbacks=[clock])
    reset_peak(device)
    trainer.train()
    sync(device)
    end = time.perf_counter()
    done = len(clock.t)
    warm = min(w["warmup"], max(0, done - 1))
    timed_real = float(torch.stack(real[warm:done]).sum()) if done > warm else 0.0
    total = sum(len(e["input_ids"]) for e in examples)
    out = {"real_tok_s": timed_real / (end - clock.t[warm]) if done > warm else None, "peak_gb": peak_gb(device),
           "losses": clock.losses, "mean_len": total / len(examples), "steps_done": done, "timed_steps": done - warm,
           "padding_fraction": 1 - float(torch.stack(real).sum()) / sum(shapes)}
    del trainer, model
    return out


# --------------------------------------------------------------------------- (b) the workbench step

def prepare(w, device, dtype, *, compile_, backend="inductor", mode=None, mask_builder="blocks", kernel_options=None,
            flex_block=128, compile_options=None):
    model = make_model(w, device, dtype, w["attn"])
    model._wb_mask_builder = mask_builder
    model._wb_flex_kernel_options = kernel_options
    model._wb_flex_block = flex_block
    if compile_:
        opts = {"options": dict(compile_options)} if compile_options and backend == "inductor" else {}
        model.get_decoder().compile(dynamic=False, backend=backend, mode=None if opts else mode, **opts)
    return model


def run_workbench(w, examples, device, *, model, steps, lr, budget, compile_, groups=None, prefetch=2,
                  print_every=10, compile_loss=False, profile_steps=0):
    """Throughput on the packing plan (``groups=None``), or one optimizer step per given example group.

    ``profile_steps``: that many more steps after the timed ones, under ``torch.profiler`` (not timed);
    the kernels' own device time (CPU time on CPU) lands in the result's ``profile``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=w.get("fused", True) or None)
    pad_to = w["token_budget"] if compile_ else None  # static shapes for the compiled graph
    rows_to = w["micro_batch"] if compile_ else None
    if groups is None:  # the routine's own plan: shuffled, packed rows, micro-batches of rows
        lengths = [len(e["input_ids"]) for e in examples]
        plan, epoch = [], 0
        while len(plan) < steps + profile_steps:
            mbs = plan_epoch(lengths, token_budget=w["token_budget"], micro_batch_size=w["micro_batch"], seed=0,
                             epoch=epoch)
            plan += [mbs[i:i + w.get("grad_accum", 1)] for i in range(0, len(mbs), w.get("grad_accum", 1))]
            epoch += 1
    else:  # the same examples as each Trainer step, packed, all micro-batches in one optimizer step
        plan = []
        for g in groups:
            rows = [[g[i] for i in r] for r in pack_rows([len(examples[i]["input_ids"]) for i in g], w["token_budget"])]
            plan.append([rows[i:i + w["micro_batch"]] for i in range(0, len(rows), w["micro_batch"])])

    def make(s):
        return [collate_packed(examples, rows, pad_id=0, pad_to=pad_to, rows_to=rows_to,
                               pin_memory=device.type == "cuda") for rows in plan[s]]

    reset_peak(device)
    losses, real, pads, trained = [], 0, 0, 0
    t0 = t_first = None
    graphs0 = graphs1 = graphs_compiled()
    t_start = time.perf_counter()
    done = 0
    with Prefetcher(make, range(steps + (profile_steps if groups is None else 0)), ahead=prefetch) as batches_of:
        for s in range(steps):
            if s == w["warmup"]:
                sync(device)
                t0 = time.perf_counter()
            batches = batches_of.get(s)
            loss, _ = train_step(model, batches, opt, max_grad_norm=1.0, loss_chunk=w["loss_chunk"],
                                 compile_loss=compile_loss)
            losses.append(loss)
            done = s + 1
            if s == 0:
                sync(device)
                t_first = time.perf_counter() - t_start  # includes the compile
                graphs1 = graphs_compiled()
                print(f"    first step (compile included) {t_first:.1f} s", flush=True)
            if t0 is not None:
                real += sum(b.n_real for b in batches)
                pads += sum(b.n_pad for b in batches)
                trained += sum(b.n_trained for b in batches)
            if print_every and t0 is not None and done % print_every == 0:
                sync(device)
                print(f"    step {done}: {real / (time.perf_counter() - t0):,.0f} real tok/s so far", flush=True)
            if budget.left() < 0:
                print(f"    out of time budget after {done} steps", flush=True)
                break
        sync(device)
        end = time.perf_counter()
        graphs_end = graphs_compiled()  # before the profiled steps: a recompile there is the profiler's doing
        profile = None
        if profile_steps and budget.left() > 0:
            profile = profile_kernels(lambda i: train_step(model, batches_of.get(done + i), opt, max_grad_norm=1.0,
                                                           loss_chunk=w["loss_chunk"], compile_loss=compile_loss),
                                      profile_steps, device)
    secs = (end - t0) if t0 else None
    out = {"real_tok_s": real / secs if secs else None, "trained_tok_s": trained / secs if secs else None,
           "peak_gb": peak_gb(device), "losses": [float(x) for x in losses], "steps_done": done,
           "timed_steps": max(0, done - w["warmup"]), "padding_fraction": pads / max(1, real + pads),
           "first_step_s": t_first, "graphs_first_step": graphs1 - graphs0,
           "graphs_after_first_step": graphs_end - graphs1}  # 0 expected: static shapes, no recompiles
    if profile:
        out["profile"] = dict(profile, graphs_compiled=graphs_compiled() - graphs_end)
    del opt
    return out


def profile_kernels(step, n: int, device, top: int = 30) -> dict:
    """Runs ``step(i)`` for i < n under ``torch.profiler``; the kernels (operators on CPU) that took the most
    self time per step, and their share of the profiled steps' wall time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for i in range(n):
            step(i)
        sync(device)
        wall_us = (time.perf_counter() - t) * 1e6
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def self_us(e):
        return getattr(e, key, None) or getattr(e, key.replace("device", "cuda"), 0.0)

    def counted(e):  # on CUDA the kernels themselves (an operator's row repeats its kernels' time)
        return self_us(e) > 0 and (device.type != "cuda" or getattr(e, "device_type", None) == DeviceType.CUDA)

    events = [e for e in prof.key_averages() if counted(e)] or [e for e in prof.key_averages() if self_us(e) > 0]
    events.sort(key=self_us, reverse=True)
    busy = sum(self_us(e) for e in events)
    rows = [{"name": e.key[:160], "calls_per_step": e.count / n, "ms_per_step": round(self_us(e) / n / 1e3, 3),
             "share_of_wall": round(self_us(e) / wall_us, 4)} for e in events[:top]]
    return {"steps": n, "wall_ms_per_step": round(wall_us / n / 1e3, 2), "timer": key,
            "busy_share_of_wall": round(busy / wall_us, 4), "top": rows}


def isolation_check(model, examples, w, *, compile_, docs=4) -> dict:
    """On the trained model: logits of the first examples of one packed row (the training path: compiled
    decoder, flex BlockMask) against each example run alone (eager, SDPA, no mask needed). A leak across
    examples shows as differences of order 1 (the reference measured 4.5 on the 0.5B model), bf16 noise
    as a few hundredths (example 0, which nothing precedes, shows the noise level)."""
    from workbench.finetune import _attn_implementation
    from workbench.packing import hidden_states

    device = next(model.parameters()).device
    row = list(range(docs))
    while sum(len(examples[i]["input_ids"]) for i in row) > w["token_budget"]:
        row.pop()
    b = collate_packed(examples, [row], pad_id=0, pad_to=w["token_budget"] if compile_ else None,
                       rows_to=w["micro_batch"] if compile_ else None).to(device)
    lm_head = model.get_output_embeddings()
    diffs, t = [], 0
    with torch.no_grad():
        packed_h = hidden_states(model, b)[0]
    stance = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") \
        else contextlib.nullcontext()
    with torch.no_grad(), stance, _attn_implementation(model, "sdpa"):
        for i in row:
            ids = torch.tensor([examples[i]["input_ids"]], device=device)
            alone = model(input_ids=ids).logits[0].float()
            packed = lm_head(packed_h[t:t + ids.shape[1]]).float()
            diffs.append(round((packed - alone).abs().max().item(), 4))
            t += ids.shape[1]
    later = max(diffs[1:]) if len(diffs) > 1 else None
    return {"max_abs_logit_diff_per_example": diffs, "isolated": later is not None and later < 0.5}


# --------------------------------------------------------------------------- main

def flex_kernel_options(arg: str, w: dict, device, dtype, mean_length: float | None = None) -> dict | None:
    """``--flex-kernel-options``: "auto" (the routine's default, ``SFTConfig.flex_kernel_options``), "none"
    (torch's defaults), a JSON object, or a benchmarks/flex_configs.py result file (its ``best_kernel_options``;
    empty there means torch's defaults won)."""
    if arg in ("auto", "none"):
        c = w["model"]
        return packing_kernel_options(None if arg == "none" else "auto", device=device,
                                      head_dim=c["hidden_size"] // c["num_attention_heads"],
                                      half_precision=dtype in (torch.bfloat16, torch.float16), mean_length=mean_length)
    p = Path(arg)
    if not p.is_file() and not arg.lstrip().startswith("{"):
        print(f"--flex-kernel-options: no file {arg}: torch's defaults", flush=True)
        return None
    opts = json.loads(p.read_text()).get("best_kernel_options") if p.is_file() else json.loads(arg)
    if not isinstance(opts, dict):
        raise SystemExit(f"--flex-kernel-options: expected a JSON object or a flex_configs.py result, got {arg!r}")
    return opts or None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--gpu-config-smoke", action="store_true",
                    help="the CUDA configuration at a tiny width (on CPU: flex math reference, aot_eager compile)")
    ap.add_argument("--only", action="append", choices=PHASES,
                    help="run only this phase (repeatable): trainer, workbench, losscheck; default all three")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="wall-clock budget of the whole run; step loops stop early and report (CUDA default 540)")
    ap.add_argument("--steps", type=int, help="timed + warm-up optimizer steps per side (default per device)")
    ap.add_argument("--check-steps", type=int, help="optimizer steps of the loss-curve comparison")
    ap.add_argument("--check-lr", type=float, help="learning rate of the loss-curve comparison (default per device)")
    ap.add_argument("--check-zipf", type=float,
                    help="Zipf exponent of the loss check's token ids (default per device; 0: uniform ids, as the "
                         "throughput phases)")
    ap.add_argument("--token-budget", type=int, help="tokens per packed row (CUDA default 4096)")
    ap.add_argument("--micro-batch", type=int, help="packed rows per forward pass (CUDA default 4)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (throughput phase)")
    ap.add_argument("--no-compile", action="store_true", help="run the workbench step eagerly")
    ap.add_argument("--flex-block", type=int, default=128, choices=[32, 64, 128, 256],
                    help="flex BlockMask block size (64: fewer masked-out scores; needs tiles that divide it, e.g. "
                         "--compile-options with max_autotune)")
    ap.add_argument("--compile-options", help='inductor options of the decoder compile, a JSON object, e.g. '
                    '\'{"max_autotune": true, "max_autotune_gemm_backends": "ATEN"}\' (flex tiles tuned, GEMMs not)')
    ap.add_argument("--flex-kernel-options", default="auto",
                    help="flex attention kernel options of the workbench step: auto (the routine's default: measured "
                         "tiles on H100/H200), none (torch's defaults), a JSON object (fwd_*/bwd_* keys) or a "
                         "benchmarks/flex_configs.py result file")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode of the decoder: default | max-autotune-no-cudagraphs | max-autotune")
    ap.add_argument("--compile-backend", help="inductor (CUDA default) | aot_eager (CPU smoke default)")
    ap.add_argument("--compile-loss", choices=["auto", "on", "off"], default="auto",
                    help="torch.compile each loss chunk's softmax + gradient (auto: with a compiled decoder)")
    ap.add_argument("--mask-builder", default="blocks", choices=["blocks", "create_block_mask"],
                    help="how the flex BlockMask is built (packing.flex_document_mask)")
    ap.add_argument("--prefetch", type=int, default=SFTConfig().prefetch, help="batches collated ahead in a thread")
    ap.add_argument("--threads", type=int, default=SFTConfig().threads,
                    help="torch intra-op threads for both sides (default: SFTConfig's, 1; 0: torch's choice)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timed steps, N more steps under torch.profiler: the kernels with the most device "
                         "time per step go into the JSON's workbench.profile (not timed)")
    ap.add_argument("--out", help="write the figures as JSON here (rewritten after every phase)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    w = dict(WORKLOADS["smoke" if args.gpu_config_smoke else args.device])
    for key, val in (("steps", args.steps), ("check_steps", args.check_steps), ("token_budget", args.token_budget),
                     ("micro_batch", args.micro_batch), ("check_lr", args.check_lr)):
        if val:
            w[key] = val
    if args.check_zipf is not None:
        w["check_zipf"] = args.check_zipf
    w["grad_accum"] = args.grad_accum
    phases = args.only or list(PHASES)
    max_seconds = args.max_seconds if args.max_seconds is not None else (540 if device.type == "cuda" else None)
    budget = Budget(max_seconds)
    dtype = torch.bfloat16 if w["dtype"] == "bf16" else torch.float32
    compile_ = w["compile"] and not args.no_compile
    cpu_flex = device.type == "cpu" and w["attn"] == "flex_attention"
    backend = args.compile_backend or ("aot_eager" if cpu_flex else "inductor")
    mode = None if args.compile_mode == "default" or backend != "inductor" else args.compile_mode
    compile_loss = args.compile_loss == "on" or (args.compile_loss == "auto" and compile_)
    compile_options = json.loads(args.compile_options) if args.compile_options else None
    if compile_options is not None and not isinstance(compile_options, dict):
        raise SystemExit(f"--compile-options: expected a JSON object, got {args.compile_options!r}")
    examples = make_examples(w)
    kernel_options = flex_kernel_options(args.flex_kernel_options, w, device, dtype,
                                         mean_length=float(np.mean([len(e["input_ids"]) for e in examples]))) \
        if w["attn"] == "flex_attention" else None
    import transformers

    res = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine(),
           "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "host_cpu": host_cpu(),
           "workload": {k: v for k, v in w.items() if k != "model"},
           "model": w["model"], "load_average": os.getloadavg(), "phases": phases, "max_seconds": max_seconds,
           "workbench_config": {"compile": compile_, "compile_backend": backend, "compile_mode": args.compile_mode,
                                "attn": w["attn"], "dtype": w["dtype"], "mask_builder": args.mask_builder,
                                "flex_kernel_options": kernel_options, "flex_block": args.flex_block,
                                "compile_options": compile_options,
                                "prefetch": args.prefetch, "fused_adamw": True, "compile_loss": compile_loss}}
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            import triton
            res["triton"] = triton.__version__
        res["cuda"] = torch.version.cuda
    fl = flops_per_token(w, float(np.mean([len(e["input_ids"]) for e in examples])))
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in res["device"]), None) if device.type == "cuda" else None
    res["flops_per_token"] = fl

    def save():
        if args.out:
            tmp = Path(args.out).with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1, default=str))
            os.replace(tmp, args.out)

    def mfu(tok_s):
        return tok_s * fl / (peak * 1e12) if peak and tok_s else None

    def phase(name, fn):
        if name not in phases:
            return None
        if budget.left() < 0:
            res[name] = {"skipped": "out of time budget"}
            print(f"[{name}] skipped: out of time budget", flush=True)
            save()
            return None
        print(f"[{name}] starting at {budget.elapsed():.0f} s", flush=True)
        out = None
        try:
            out = fn()
        except Exception as exc:  # OOM, compile failure: record it, go on with the other phases
            res[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-4000:]}
            print(f"[{name}] FAILED: {res[name]['error'][:500]}", flush=True)
            failed.add(name)
        if name in failed:  # the exception and its frames are gone now: their device memory can be freed
            if name == "workbench":
                state.clear()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        save()
        return out

    print(f"device {res['device']}, torch {res['torch']}, transformers {res['transformers']}, "
          f"threads {res['cpu_threads']}, load {res['load_average'][0]:.1f}, budget {max_seconds} s", flush=True)
    save()
    ctx = flex_reference_backward() if cpu_flex else contextlib.nullcontext()
    state: dict = {}
    failed: set[str] = set()
    with ctx:
        # --- (a) throughput of the Trainer, padded batches
        def trainer_phase():
            hf = run_trainer(w, examples, device, dtype, steps=w["steps"], lr=w["lr"], budget=budget)
            res["trainer"] = {k: v for k, v in hf.items() if k != "losses"}
            res["trainer"]["mfu"] = mfu(hf["real_tok_s"])
            print(f"(a) HF Trainer, padded batches of {w['batch']}: {hf['real_tok_s'] or 0:,.0f} real tokens/s, "
                  f"padding {hf['padding_fraction']:.1%}, peak {hf['peak_gb']} GiB", flush=True)
            return hf

        hf = phase("trainer", trainer_phase)

        # --- (b) throughput of the workbench step, packed rows
        def workbench_phase():
            model = prepare(w, device, dtype, compile_=compile_, backend=backend, mode=mode,
                            mask_builder=args.mask_builder, kernel_options=kernel_options,
                            flex_block=args.flex_block, compile_options=compile_options)
            state["model"] = model
            state["init"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            wb = run_workbench(w, examples, device, model=model, steps=w["steps"], lr=w["lr"], budget=budget,
                               compile_=compile_, prefetch=args.prefetch, compile_loss=compile_loss,
                               profile_steps=args.profile)
            res["workbench"] = {k: v for k, v in wb.items() if k != "losses"}
            res["workbench"]["mfu"] = mfu(wb["real_tok_s"])
            res["workbench"]["tokens_per_step"] = w["token_budget"] * w["micro_batch"] * w["grad_accum"]
            try:  # the isolation trap, on this card: packed (compiled, flex) vs alone (eager, SDPA)
                res["workbench"]["isolation"] = isolation_check(model, examples, w, compile_=compile_)
            except Exception as exc:
                res["workbench"]["isolation"] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            print(f"    isolation: {res['workbench']['isolation']}", flush=True)
            if wb.get("profile"):
                prof = wb["profile"]
                print(f"    profile of {prof['steps']} steps, {prof['wall_ms_per_step']} ms each, kernels busy "
                      f"{prof['busy_share_of_wall']:.0%} of it; top by self time:", flush=True)
                for r in prof["top"][:12]:
                    print(f"      {r['ms_per_step']:8.2f} ms  {r['share_of_wall']:6.1%}  x{r['calls_per_step']:g}  "
                          f"{r['name'][:90]}", flush=True)
            print(f"(b) workbench packed rows of {w['token_budget']} x {w['micro_batch']}: "
                  f"{wb['real_tok_s'] or 0:,.0f} real tokens/s, padding {wb['padding_fraction']:.1%}, "
                  f"peak {wb['peak_gb']} GiB, graphs compiled at step 1: {wb['graphs_first_step']}, "
                  f"after: {wb['graphs_after_first_step']}", flush=True)
            return wb

        wb = phase("workbench", workbench_phase)
        if "workbench" in failed and (kernel_options or compile_options or args.flex_block != 128) \
                and budget.left() > 0:
            # tiles that fit flex alone can exceed a kernel with fused prologues, a block size can lack
            # tiles: measure torch's defaults instead (128-token blocks, default tiles, plain compile)
            res["workbench_failed_with_kernel_options"] = res.pop("workbench")
            res["workbench_config"].update(flex_kernel_options=None, flex_block=128, compile_options=None)
            kernel_options = compile_options = None
            args.flex_block = 128
            failed.discard("workbench")
            print("[workbench] retrying with torch's default flex kernel options", flush=True)
            wb = phase("workbench", workbench_phase)
        if hf and wb and hf["real_tok_s"] and wb["real_tok_s"]:
            res["ratio"] = wb["real_tok_s"] / hf["real_tok_s"]
            mem = (f"; peak memory {wb['peak_gb']} vs {hf['peak_gb']} GiB" if device.type == "cuda" else "")
            print(f"ratio workbench / Trainer: {res['ratio']:.2f}x"
                  + (f"; MFU {res['trainer']['mfu']:.1%} vs {res['workbench']['mfu']:.1%}" if peak else "") + mem,
                  flush=True)
            save()

        # --- (c) the same examples per optimizer step: loss curves side by side
        def losscheck_phase():
            if "workbench" in failed:  # it would fail the same way (and compile again): rerun it on its own
                res["losscheck"] = {"skipped": "the workbench phase failed in this run; try --only losscheck "
                                               "with other workbench options"}
                print("[losscheck] skipped: the workbench phase failed", flush=True)
                return
            n = w["check_steps"]
            pool = make_examples(w, zipf=w["check_zipf"]) if w.get("check_zipf") else examples
            ordered = [pool[i] for i in range(n * w["batch"])]
            groups = [list(range(i * w["batch"], (i + 1) * w["batch"])) for i in range(n)]
            hf_c = run_trainer(w, ordered, device, dtype, steps=n, lr=w["check_lr"], budget=budget, sequential=True,
                               log_every_step=True)
            print(f"    trainer : {' '.join(f'{x:.4f}' for x in hf_c['losses'])}", flush=True)
            model = state.get("model")
            if model is not None:  # reuse the compiled decoder: back to the initial weights, no second compile
                with torch.no_grad():
                    model.load_state_dict(state["init"])
                model.zero_grad(set_to_none=True)
            else:
                model = prepare(w, device, dtype, compile_=compile_, backend=backend, mode=mode,
                                mask_builder=args.mask_builder, kernel_options=kernel_options,
                            flex_block=args.flex_block, compile_options=compile_options)
            wb_c = run_workbench(w, ordered, device, model=model, steps=min(n, len(hf_c["losses"])), lr=w["check_lr"],
                                 budget=budget, compile_=compile_, groups=groups, prefetch=args.prefetch,
                                 print_every=0, compile_loss=compile_loss)
            print(f"    workbench: {' '.join(f'{x:.4f}' for x in wb_c['losses'])}", flush=True)
            rel = [abs(a - b) / abs(b) for a, b in zip(wb_c["losses"], hf_c["losses"])]
            res["losscheck"] = {"steps": len(rel), "trainer": hf_c["losses"], "workbench": wb_c["losses"],
                                "max_relative_diff": max(rel) if rel else None,
                                "within_1pct": bool(rel) and max(rel) < 0.01}
            print(f"loss curves on the same {len(rel)} batches: max relative difference "
                  f"{max(rel) if rel else float('nan'):.2e} ({'within' if rel and max(rel) < 0.01 else 'NOT within'} 1%)",
                  flush=True)

        phase("losscheck", losscheck_phase)
    res["wall_s"] = round(budget.elapsed(), 1)
    save()
    print(f"done in {res['wall_s']} s" + (f"; figures in {args.out}" if args.out else ""), flush=True)
    return res


if __name__ == "__main__":
    main()
