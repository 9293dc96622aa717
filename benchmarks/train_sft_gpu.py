"""``train_sft`` end to end on the throughput issue's workload: the whole routine, not only its step.

    python benchmarks/train_sft_gpu.py --device cuda --out sft.json    # 0.5B-shaped Qwen2, 4,096 examples
    python benchmarks/train_sft_gpu.py --device cpu --tiny             # the same flow at a tiny size (tests)
    python benchmarks/train_sft_gpu.py --model ~/models/my-model --set lora=true --set micro_batch_size=4
                                                                       # your model and settings on your GPU

``benchmarks/train_throughput.py`` times ``finetune.train_step`` against the Trainer; this script runs
what a user runs: a workspace with ``sft_examples`` and ``splits`` tables, a model folder (a Qwen2.5-0.5B-
shaped config, random weights, saved with a byte-level BPE tokenizer trained here on the generated text:
no download), and ``train_sft`` with the CUDA defaults (bf16 autocast, flex attention with the document
mask, compiled decoder, fused AdamW, prefetched batches) plus evaluations, best-weights saving, the test
split and the saved model. It prints and writes (``--out``) what ``train_sft`` recorded in ``run_metrics``:
each throughput window's real tokens/s, MFU and peak memory, the first (compiling) step's seconds,
validation and test losses, and how many graphs were compiled in all (evaluation runs eagerly on SDPA,
training must go back to the same compiled graph).

Examples: lengths log-normal (median 260 tokens, sigma 0.8, clipped to 32..1024; mean about 334), the
first 40% of each example's words are the prompt (no loss), the rest the completion, words drawn from a
generated lexicon that the tokenizer learns as single tokens. ``--tiny`` runs the CUDA configuration on
CPU at a tiny width (flex attention through its math reference, the decoder compiled with aot_eager).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import QWEN05, graphs_compiled  # noqa: E402  (the same model shape; dynamo's graph count)

SIZES = {
    "gpu": dict(model=QWEN05, n_examples=4096, median=260, sigma=0.8, min_len=32, max_len=1024, lexicon=3000,
                tokenizer_vocab=8192, token_budget=4096, micro_batch=8, epochs=1, evals_per_epoch=3, lr=1e-4,
                max_eval_examples=32, max_new_tokens=4),
    "tiny": dict(model=dict(QWEN05, vocab_size=2048, hidden_size=112, intermediate_size=224, num_hidden_layers=2,
                            max_position_embeddings=1024),
                 n_examples=160, median=40, sigma=0.6, min_len=8, max_len=128, lexicon=300, tokenizer_vocab=1024,
                 token_budget=256, micro_batch=2, epochs=1, evals_per_epoch=2, lr=1e-3, max_eval_examples=4,
                 max_new_tokens=2),
}
TASK, TEMPLATE = "synthetic_instructions", "synthetic_v1"


def lexicon(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pronounceable pseudo-words (2-3 syllables)."""
    rng = np.random.default_rng(seed)
    cons, vows = list("bdfgklmnprstvz"), ["a", "e", "i", "o", "u", "ai", "ou"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(int(rng.integers(2, 4)))))
    return sorted(words)


def make_examples(size: dict, seed: int = 0) -> pd.DataFrame:
    """``sft_examples`` rows (docs/schema.md): prompt = the first 40% of an example's words, completion the rest."""
    rng = np.random.default_rng(seed)
    words = np.array(lexicon(size["lexicon"], seed))
    lens = np.clip(rng.lognormal(math.log(size["median"]), size["sigma"], size["n_examples"]),
                   size["min_len"], size["max_len"]).astype(int)
    rows = []
    for i, n in enumerate(lens):
        w = words[rng.integers(0, len(words), n)]
        p = max(1, int(n * 0.4))
        src = f"synthetic.csv:{i + 2}"
        rows.append({"example_id": f"{TEMPLATE}:{src}", "source_row_id": src, "task": TASK, "template_id": TEMPLATE,
                     "prompt": " ".join(w[:p]), "completion": " ".join(w[p:]), "choices": None})
    return pd.DataFrame(rows)


def make_splits(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """90% train, 5% validation, 5% test (at least 2 each), by a seeded permutation."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    k = max(2, len(df) // 20)
    split = np.array(["train"] * len(df), dtype=object)
    split[order[:k]], split[order[k:2 * k]] = "validation", "test"
    return pd.DataFrame({"example_id": df["source_row_id"], "split": split, "seed": seed, "batch_id": "b0",
                         "assigned_at": pd.Timestamp("2026-01-01")})


def make_model_folder(size: dict, texts: list[str], folder: Path) -> dict:
    """A Qwen2 model of the size's config (random weights) saved with a BPE tokenizer trained on ``texts``.
    The embedding keeps the config's vocabulary (Qwen's 151,936 rows on the GPU size) even though the
    tokenizer uses fewer ids, as Qwen's own checkpoints do: the lm_head costs what the real model's does."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from workbench.template_tokens import train_chat_tokenizer

    tok = train_chat_tokenizer(texts, vocab_size=size["tokenizer_vocab"])
    cfg = Qwen2Config(**dict(size["model"], vocab_size=max(size["model"]["vocab_size"], len(tok))),
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"tokenizer_vocab": len(tok), "model_vocab": cfg.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters())}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny model and data: the CUDA configuration on CPU")
    ap.add_argument("--examples", type=int, help="number of generated examples (default per size)")
    ap.add_argument("--epochs", type=int, help="passes over the train split (default per size)")
    ap.add_argument("--micro-batch", type=int, help="packed rows per forward pass (GPU default 8)")
    ap.add_argument("--token-budget", type=int, help="tokens per packed row (GPU default 4096)")
    ap.add_argument("--compile-mode", default="default", help="SFTConfig.compile_mode")
    ap.add_argument("--model", help="train this model folder or Hugging Face id instead of the generated 0.5B-shaped "
                                    "one (its own tokenizer reads the generated text)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="SFTConfig field for the run, repeatable (e.g. lora=true, precision=bf16, micro_batch_size=4)")
    ap.add_argument("--workdir", help="folder for the workspace and model (default: a temporary folder)")
    ap.add_argument("--out", help="write the figures as JSON here")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # model save/load bars: not figures

    import workbench
    from workbench.finetune import SFTConfig, config_from_strings, train_sft
    from workbench.packing import flex_reference_backward
    from workbench.workspace import write_table

    size = dict(SIZES["tiny" if args.tiny else "gpu"])
    for key, val in (("n_examples", args.examples), ("epochs", args.epochs), ("micro_batch", args.micro_batch),
                     ("token_budget", args.token_budget)):
        if val:
            size[key] = val
    device = torch.device(args.device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wb-sft-gpu-"))
    res: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.machine(),
                 "torch": torch.__version__, "transformers": transformers.__version__,
                 "python": platform.python_version(), "cpu_count": os.cpu_count(), "size": {k: v for k, v in size.items() if k != "model"},
                 "model_config": size["model"]}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1, default=str))

    t = time.perf_counter()
    con = workbench.connect(work / "workspace")
    examples = make_examples(size)
    write_table(con, "sft_examples", examples)
    splits = make_splits(examples)
    write_table(con, "splits", splits)
    if args.model:
        res["model"] = {"path": args.model}
    else:
        res["model"] = make_model_folder(size, (examples["prompt"] + " " + examples["completion"]).tolist(),
                                         work / "model")
    res["setup_s"] = round(time.perf_counter() - t, 1)
    n_train = int((splits["split"] == "train").sum())
    cuda_like = dict(attn_implementation="flex_attention", compile="on", precision="bf16-mixed", fused_optimizer="on",
                     compile_loss="on", compile_backend="aot_eager", peak_tflops=1.0) if args.tiny else {}
    steps_per_epoch = max(1, round(n_train * float(np.mean([len(p.split()) + len(c.split()) for p, c in zip(
        examples["prompt"], examples["completion"])])) / (size["token_budget"] * size["micro_batch"])))
    cfg = SFTConfig(model=args.model or str(work / "model"), task=TASK, device=args.device, max_length=size["max_len"] + 16,
                    overlength="truncate", token_budget=size["token_budget"], micro_batch_size=size["micro_batch"],
                    epochs=size["epochs"], lr=size["lr"], warmup_steps=2, eval_at_start=False,
                    eval_every=max(2, steps_per_epoch // size["evals_per_epoch"]), metric="loss", patience=0,
                    max_eval_examples=size["max_eval_examples"], max_new_tokens=size["max_new_tokens"],
                    checkpoint_every=10 ** 6, compile_mode=args.compile_mode, **cuda_like)
    cfg = config_from_strings(args.set, cfg)
    res["config"] = {k: v for k, v in vars(cfg).items() if k != "model"}
    save()
    graphs0 = graphs_compiled()
    t = time.perf_counter()
    ctx = flex_reference_backward() if args.tiny and device.type == "cpu" else contextlib.nullcontext()
    with ctx:
        out = train_sft(con, cfg, progress=False)
    res["train_sft_s"] = round(time.perf_counter() - t, 1)
    res["graphs_compiled"] = graphs_compiled() - graphs0
    m = con.execute("select split, step, metric, value from run_metrics where run_id = ? order by step",
                    [out.run_id]).df()
    con.close()
    train = m[m.split == "train"]
    windows = train[train.metric.isin(["real_tokens_per_s", "trained_tokens_per_s", "mfu", "peak_memory_gb",
                                       "padding_fraction"])].pivot(index="step", columns="metric", values="value")
    res.update(run_id=out.run_id, status=out.status, steps=out.steps, model_path=out.model_path,
               first_step_s=float(train[train.metric == "first_step_seconds"]["value"].iloc[0]),
               windows=windows.reset_index().round(4).to_dict("records"),
               validation_loss=m[(m.split == "validation") & (m.metric == "loss")][["step", "value"]].values.tolist(),
               test={r.metric: r.value for r in m[m.split == "test"].itertuples()},
               train_loss_first_last=[float(train[train.metric == "loss"]["value"].iloc[i]) for i in (0, -1)])
    save()
    about = (f"{res['model']['parameters']:,} parameters (vocabulary {res['model']['model_vocab']:,}, tokenizer "
             f"{res['model']['tokenizer_vocab']:,})" if "parameters" in res["model"] else res["model"]["path"])
    print(f"device {res['device']}, torch {res['torch']}, transformers {res['transformers']}; model {about}; "
          f"{len(examples):,} examples, setup {res['setup_s']} s", flush=True)
    print(f"train_sft: {out.status}, {out.steps} steps in {res['train_sft_s']} s (first step {res['first_step_s']:.1f} s), "
          f"graphs compiled {res['graphs_compiled']}, train loss {res['train_loss_first_last'][0]:.3f} -> "
          f"{res['train_loss_first_last'][1]:.3f}", flush=True)
    for w in res["windows"]:
        mfu = f", MFU {w['mfu']:.1%}" if w.get("mfu") == w.get("mfu") and w.get("mfu") is not None else ""
        print(f"  window to step {int(w['step'])}: {w['real_tokens_per_s']:,.0f} real tok/s, "
              f"{w['trained_tokens_per_s']:,.0f} trained tok/s, padding {w['padding_fraction']:.1%}{mfu}, "
              f"peak {w['peak_memory_gb']:.2f} GiB", flush=True)
    print(f"  validation loss {[round(v, 4) for _, v in res['validation_loss']]}; test {res['test']}", flush=True)
    return res


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
