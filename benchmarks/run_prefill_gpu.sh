#!/usr/bin/env bash
# One GPU call for the prefill engines (prefill11b): the GPU tests of the new engines, then the int8
# and weight-only prefill benchmarks (JSON + logs to $OUT). Each step has its own time limit so a
# slow one cannot eat the others' device time.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.:benchmarks
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
QCOMPILER_TRITON_AUTOTUNE=0 timeout 40 python3 -m pytest -x -q -p no:cacheprovider \
  tests/backends/triton/test_triton_int8_gemm_engine.py tests/backends/triton/test_triton_weight_only_prefill.py \
  2>&1 | tail -15 | tee "$OUT/tests.log"
timeout 70 python3 benchmarks/bench_int8_prefill.py --ms 2048 --extra-ms "" 2>&1 | tee "$OUT/int8_2048.log" | grep -v "^ " | tail -30
timeout 50 python3 benchmarks/bench_weight_only_prefill.py --ms 2048 2>&1 | tee "$OUT/wo_2048.log" | tail -22
cp "$OUT/bench_int8_prefill.json" "$OUT/bench_int8_prefill_2048.json" 2>/dev/null
timeout 25 python3 benchmarks/bench_int8_prefill.py --ms 512,8192 --variants int8-outlier --extra-ms "" \
  --shapes q/o,gate/up 2>&1 | tee "$OUT/int8_extra_m.log" | tail -8
