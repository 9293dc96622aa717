#!/bin/bash
# One device call of a GPU session (docs/benchmarks.md, "GPU session runbook"): run on the device machine in
# the repository root, with the DuckDB wheels carried in .whl/, as `bash benchmarks/gpu_session.sh [SECONDS]`.
# Writes card.txt, *.json and *.log to $OUT (default ./gpu-out), each step bounded by the time left of SECONDS
# (default 570). STEPS="..." picks steps (default "sft throughput flex"); they run in this order:
#   sft        train_sft_gpu.py: train_sft end to end on the 0.5B-shaped model (at most CAP_SFT=240 s) -> sft.json
#   throughput train_throughput.py, all phases (Trainer, workbench step, loss curves), 32k-token steps, the
#              routine's default flex tiles, a kernel profile of 3 more steps             -> throughput.json / .log
#   flex       flex_configs.py: flex attention's kernel tiles on this card, on the workload's masks -> flex.json
#   tuned      train_throughput.py, all phases, with flex.json's best tiles               -> tuned.json / .log
#   block64    the workbench step with 64-token BlockMask blocks and inductor's search over flex tiles
#              (GEMMs left to ATen); compare with throughput's Trainer                   -> block64.json / .log
#   autotune   the workbench step with --compile-mode max-autotune-no-cudagraphs (did not finish compiling
#              in 150 s on an H100, 2026-11-26)                                            -> autotune.json / .log
T0=$(date +%s)
BUDGET=${1:-570}
OUT=${OUT:-$PWD/gpu-out}
STEPS=${STEPS:-sft throughput flex}
CAP_SFT=${CAP_SFT:-240}  # train_sft end to end has never run on a GPU: it must not take the whole call
mkdir -p "$OUT"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
} 2>&1 | tee "$OUT/card.txt"

step() {  # step NAME MIN_SECONDS command...: runs the command if named in STEPS and MIN_SECONDS are left
  local name=$1 need=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  local l; l=$(left)
  if [ "$l" -lt "$need" ]; then echo "[$name] skipped: $l s left, needs $need"; return; fi
  local cap_var="CAP_${name^^}"; local cap=${!cap_var:-0}  # CAP_SFT=240: at most that many seconds for the step
  if [ "$cap" -gt 0 ] && [ "$cap" -lt "$l" ]; then l=$cap; fi
  echo "[$name] starting, up to $l s"
  timeout "$l" "$@" > "$OUT/$name.log" 2>&1
  echo "[$name] rc $? after $(( $(date +%s) - T0 )) s"
  grep -v -e "^{'" -e "warn" -e "USDT" "$OUT/$name.log" | tail -30
}

step sft 150 python3 benchmarks/train_sft_gpu.py --device cuda --out "$OUT/sft.json"
step throughput 200 python3 benchmarks/train_throughput.py --device cuda --micro-batch 8 --profile 3 \
  --max-seconds $(( $(left) - 30 < 300 ? $(left) - 30 : 300 )) --out "$OUT/throughput.json"
step flex 60 python3 benchmarks/flex_configs.py --device cuda --max-seconds "${FLEX_SECONDS:-100}" --out "$OUT/flex.json"
step tuned 200 python3 benchmarks/train_throughput.py --device cuda --micro-batch 8 --flex-kernel-options "$OUT/flex.json" \
  --profile 3 --max-seconds $(( $(left) - 15 )) --out "$OUT/tuned.json"
step block64 150 python3 benchmarks/train_throughput.py --device cuda --only workbench --micro-batch 8 --flex-block 64 \
  --flex-kernel-options none --compile-options '{"max_autotune": true, "max_autotune_gemm_backends": "ATEN"}' \
  --profile 3 --max-seconds $(( $(left) - 15 )) --out "$OUT/block64.json"
step autotune 120 python3 benchmarks/train_throughput.py --device cuda --only workbench --micro-batch 8 \
  --compile-mode max-autotune-no-cudagraphs --profile 3 --max-seconds $(( $(left) - 20 )) --out "$OUT/autotune.json"
echo "total $(( $(date +%s) - T0 )) s"
