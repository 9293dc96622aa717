"""Flex attention kernel configurations on the training workload's own document masks.

The H100 profile of 2026-11-26 (docs/benchmarks.md) put flex attention at 14% of the workbench step
(forward 11.1 ms + backward 20.9 ms of 226.8 ms) for under 3% of its FLOPs: short documents leave each
query block only a few key blocks, most of them partial. This script times the compiled flex attention
forward and backward alone, at the workload's shapes (rows x 4096 tokens, 14 query / 2 KV heads, head
dim 64, bf16) on the packing plan's own ``BlockMask``s, under torch's default kernel configuration and
under each candidate of ``FWD`` and ``BWD`` (Triton tile sizes, stages, warps: flex's ``kernel_options``
with ``fwd_`` / ``bwd_`` prefixes), and checks each candidate's output and gradients against the default.
Forward and backward are separate kernels, so the best of each combine; the winner is written to
``--out`` as ``best_kernel_options``, ready for ``train_throughput.py --flex-kernel-options`` and for
``SFTConfig(flex_kernel_options=...)``. Then two whole setups are timed the same way: inductor's own search
over flex tiles (``max_autotune`` with GEMMs left to ATen) at 128-token blocks and at 64-token blocks
(``SFTConfig(flex_block_size=64, compile_options=...)``): smaller blocks compute fewer masked-out scores on
short documents, but torch's default backward tiles need 128.

    python benchmarks/flex_configs.py --device cuda --out flex.json       # seconds per candidate (compile)
    python benchmarks/flex_configs.py --device cpu --smoke                # the harness itself, on CPU
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_throughput import WORKLOADS, make_examples  # noqa: E402

from workbench.packing import collate_packed, flex_document_mask, flex_reference_backward, plan_epoch  # noqa: E402

AUTOTUNE = {"max_autotune": True, "max_autotune_gemm_backends": "ATEN"}
# candidates (sparse block 128: every tile size must divide it; backward needs N1 % M1 == 0 and M2 % N2 == 0)
FWD = [dict(BLOCK_M=m, BLOCK_N=n, num_stages=s, num_warps=w) for m, n, s, w in
       [(128, 64, 3, 4), (128, 128, 2, 8), (64, 128, 3, 4), (64, 64, 3, 4), (128, 64, 4, 8), (128, 128, 4, 4)]]
BWD = [dict(BLOCK_M1=m1, BLOCK_N1=n1, BLOCK_M2=m2, BLOCK_N2=n2, num_stages=s, num_warps=w) for m1, n1, m2, n2, s, w in
       [(64, 128, 128, 64, 3, 4), (64, 64, 64, 64, 3, 4), (32, 128, 128, 32, 3, 4), (32, 64, 64, 32, 3, 4),
        (64, 128, 128, 64, 2, 8), (64, 64, 64, 64, 4, 4), (32, 128, 128, 32, 4, 8)]]


def prefixed(opts: dict, prefix: str) -> dict:
    return {f"{prefix}_{k}": v for k, v in opts.items()}


def masks_of(w: dict, device, n: int, block: int = 128) -> list:
    examples = make_examples(w)
    lengths = [len(e["input_ids"]) for e in examples]
    mbs = plan_epoch(lengths, token_budget=w["token_budget"], micro_batch_size=w["micro_batch"], seed=0, epoch=0)
    out = []
    for rows in mbs[:n]:
        b = collate_packed(examples, rows, pad_id=0, pad_to=w["token_budget"], rows_to=w["micro_batch"])
        out.append(flex_document_mask(b.doc_ids.to(device), block_size=block))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu":  # no CPU flex backward kernel: the math reference (as the benchmark's CPU smoke)
        with flex_reference_backward():
            return run(args)
    return run(args)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=8, help="timed forward+backward passes per candidate")
    ap.add_argument("--max-seconds", type=float, default=150, help="stop trying candidates after this long")
    ap.add_argument("--setup-seconds", type=float, default=120,
                    help="more seconds for the autotuned setups (block 128 and 64) after the candidates")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, two candidates (checks the harness)")
    ap.add_argument("--out")
    return ap.parse_args(argv)


def run(args) -> dict:
    t_start = time.perf_counter()
    device = torch.device(args.device)
    from torch.nn.attention.flex_attention import flex_attention

    w = dict(WORKLOADS["smoke" if args.smoke else "cuda"], micro_batch=args.micro_batch)
    c = w["model"]
    hq, hkv, d = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mask_sets = {128: masks_of(w, device, args.reps)}
    rows, T = w["micro_batch"], w["token_budget"]
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(rows, hq, T, d, device=device, dtype=dtype, generator=g)
    k = torch.randn(rows, hkv, T, d, device=device, dtype=dtype, generator=g)
    v = torch.randn(rows, hkv, T, d, device=device, dtype=dtype, generator=g)
    go = torch.randn(rows, hq, T, d, device=device, dtype=dtype, generator=g)
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    fwd_c, bwd_c = (FWD[:1], BWD[:1]) if args.smoke else (FWD, BWD)

    def timed(opts: dict, block: int = 128, options: dict | None = None):
        torch._dynamo.reset()  # one compiled graph per candidate (kernel options are compile-time constants)
        if block not in mask_sets:
            mask_sets[block] = masks_of(w, device, args.reps, block)
        masks = mask_sets[block]
        extra = {"options": options} if options and backend == "inductor" else {}
        fn = torch.compile(flex_attention, dynamic=False, backend=backend, **extra)
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))

        def call(m):
            return fn(qq, kk, vv, block_mask=m, enable_gqa=True, kernel_options=opts or None)

        def once(m):
            out = call(m)
            out.backward(go)
            return out

        t0 = time.perf_counter()
        ref = once(masks[0])  # compile + first run
        compile_s = time.perf_counter() - t0
        grads = [t.grad.clone() for t in (qq, kk, vv)]
        fwd_ms, bwd_ms = [], []
        for m in masks:
            for t in (qq, kk, vv):
                t.grad = None
            if device.type == "cuda":
                e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                e[0].record()
                out = call(m)
                e[1].record()
                out.backward(go)
                e[2].record()
                torch.cuda.synchronize()
                fwd_ms.append(e[0].elapsed_time(e[1]))
                bwd_ms.append(e[1].elapsed_time(e[2]))
            else:
                t0 = time.perf_counter()
                out = call(m)
                t1 = time.perf_counter()
                out.backward(go)
                fwd_ms.append((t1 - t0) * 1e3)
                bwd_ms.append((time.perf_counter() - t1) * 1e3)
        return ref.detach(), grads, {"fwd_ms": float(np.median(fwd_ms)), "bwd_ms": float(np.median(bwd_ms)),
                                     "compile_s": round(compile_s, 1)}

    res = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "shape": {"rows": rows, "T": T, "q_heads": hq, "kv_heads": hkv, "head_dim": d, "dtype": str(dtype)},
           "masks": len(mask_sets[128]), "candidates": []}

    def save():  # after every candidate: a run cut short by the session's clock keeps what it measured
        res["best_kernel_options"] = {**prefixed(best["fwd"][0], "fwd"), **prefixed(best["bwd"][0], "bwd")}
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))

    def rel_diff(out, grads) -> float:  # output, dq, dk, dv against torch's default configuration
        return max(float((a.float() - b.float()).abs().max()) / max(1.0, float(b.float().abs().max()))
                   for a, b in zip([out] + grads, [ref_out] + ref_grads))

    ref_out, ref_grads, base = timed({})
    res["default"] = base
    print(f"default: fwd {base['fwd_ms']:.3f} ms, bwd {base['bwd_ms']:.3f} ms (compile {base['compile_s']} s)", flush=True)
    best = {"fwd": ({}, base["fwd_ms"]), "bwd": ({}, base["bwd_ms"])}
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    # backward first (it is the larger kernel), then alternating, so a short budget still tries both
    order = [x for pair in zip([("bwd", o) for o in bwd_c], [("fwd", o) for o in fwd_c]) for x in pair]
    order += [("bwd", o) for o in bwd_c[len(fwd_c):]] + [("fwd", o) for o in fwd_c[len(bwd_c):]]
    for kind, opts in order:
        if time.perf_counter() - t_start > args.max_seconds:
            print(f"{kind} {opts}: skipped (time budget)", flush=True)
            continue
        row = {"kind": kind, "options": opts}
        try:
            out, grads, t = timed(prefixed(opts, kind))
            err = rel_diff(out, grads)
            row.update(t, max_rel_diff=err, ok=err <= tol)
            print(f"{kind} {opts}: fwd {t['fwd_ms']:.3f} ms, bwd {t['bwd_ms']:.3f} ms, "
                  f"max diff {err:.2e}{'' if row['ok'] else ' (WRONG: not used)'}", flush=True)
            if row["ok"] and t[f"{kind}_ms"] < 0.98 * best[kind][1]:  # 2%: below that, timing noise
                best[kind] = (opts, t[f"{kind}_ms"])
        except Exception as exc:  # resources exceeded, unsupported combination: skip it
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            print(f"{kind} {opts}: failed ({row['error']})", flush=True)
        res["candidates"].append(row)
        save()
    # whole setups: inductor's own search over flex tiles (max_autotune; GEMMs left to ATen: nothing to tune
    # here) at torch's 128-token blocks and at 64-token blocks (fewer masked-out scores on short documents;
    # torch's default backward tiles need 128, the search includes smaller ones). Fwd and bwd are tuned together.
    res["setups"] = []
    for block in ((128, 64) if not args.smoke else (64,)):
        name = f"block {block}, flex autotune"
        if time.perf_counter() - t_start > args.max_seconds + args.setup_seconds:
            print(f"{name}: skipped (time budget)", flush=True)
            continue
        row = {"name": name, "flex_block": block, "compile_options": AUTOTUNE}
        try:
            out, grads, t = timed({}, block=block, options=AUTOTUNE)
            err = rel_diff(out, grads)
            row.update(t, max_rel_diff=err, ok=err <= tol, total_ms=t["fwd_ms"] + t["bwd_ms"])
            print(f"{name}: fwd {t['fwd_ms']:.3f} ms, bwd {t['bwd_ms']:.3f} ms (compile {t['compile_s']} s), "
                  f"max diff {err:.2e}{'' if row['ok'] else ' (WRONG)'}", flush=True)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            print(f"{name}: failed ({row['error']})", flush=True)
        res["setups"].append(row)
        save()
    res["best_ms"] = {"fwd": best["fwd"][1], "bwd": best["bwd"][1],
                      "default_total": base["fwd_ms"] + base["bwd_ms"], "best_total": best["fwd"][1] + best["bwd"][1]}
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"best: {res['best_kernel_options'] or 'torch default'}: fwd+bwd {res['best_ms']['best_total']:.3f} ms "
          f"per layer-call vs default {res['best_ms']['default_total']:.3f} ms", flush=True)
    return res


if __name__ == "__main__":
    main()
