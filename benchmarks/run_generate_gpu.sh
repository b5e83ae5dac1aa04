#!/usr/bin/env bash
# The issue #11 tables on the GPU machine, one stage per `run` call (each stays inside the 600 s limit):
#   bash benchmarks/run_generate_gpu.sh tests   # GPU tests not yet run on a GPU (~300 s)
#   bash benchmarks/run_generate_gpu.sh gemv    # the 4-bit paired-float16 GEMV's GPU tests + its sweep vs float32 (~300 s)
#   bash benchmarks/run_generate_gpu.sh user    # compile -> generate -> save, load(dir) -> generate, fresh processes
#   bash benchmarks/run_generate_gpu.sh prefill # the prompt's GPU tests (~150 s), then 1.1B prompts: compiled vs captured (~560 s in all)
#   bash benchmarks/run_generate_gpu.sh 8b      # fp16-lean + the qcompiler rows, Llama-3-8B layer shapes, 2 layers (~330 s)
#   bash benchmarks/run_generate_gpu.sh 8b-peers  # fp16-lean again + torchao / bitsandbytes / transformers' fp16 rows
#                                               # (~560 s; torchao's first compiled step alone takes ~100 s)
#   bash benchmarks/run_generate_gpu.sh 1.1b    # the same two for the TinyLlama-1.1B shape, 8 of 22 layers
#   bash benchmarks/run_generate_gpu.sh 1.1b-peers  # (LAYERS=22: ~70 s a row with the compiled step)
# Carry `.whl` (peers: /work/shared/tools/device-wheels.sh peers). Logs and JSON go to $OUT; a stage cut
# by its limit keeps the rows it finished (bench_generate.py --out is written after every row).
set -o pipefail
stage=${1:?tests, gemv, user, prefill, 8b, 8b-peers, 1.1b or 1.1b-peers}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
rows_qc=qc-w4-weight-only,qc-int8-outlier,qc-w8-weight-only,qc-gptq-w4,qc-w8a8-smoothquant,qc-nf4
rows_peers=torchao-int4wo-lean,torchao-int8wo-lean,bnb-nf4,bnb-int8,fp16-compiled,fp16-eager,torchao-int4wo,torchao-int8wo
case $stage in
  tests)
    QCOMPILER_TRITON_AUTOTUNE=0 timeout 320 python3 -m pytest --durations=15 -q -p no:cacheprovider -p no:logging -rfE \
      tests/backends/triton/test_sibling_group.py tests/passes/test_fuse_siblings.py \
      tests/backends/triton/test_triton_split_k_counters.py tests/backends/triton/test_triton_nf4_register_table.py \
      tests/backends/triton/test_triton_weight_only_gemv_magic.py tests/runtime/test_decode_loop.py tests/serialize/test_standalone_load_triton.py \
      tests/runtime/test_tensor_places.py tests/runtime/test_generation_settings.py tests/runtime/test_lean_generate.py tests/runtime/test_cache_reset.py \
      > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -20
    # with the autotuner on: a fresh process's re-tuning is what the saved kernel configs must undo
    timeout 200 python3 -m pytest -q -p no:cacheprovider -p no:logging -rfE tests/serialize/test_backend_state.py \
      > "$OUT/tests_autotune.log" 2>&1; echo "autotune tests rc=$?"; tail -3 "$OUT/tests_autotune.log" ;;
  gemv)
    # the 4-bit paired-float16 GEMV: its GPU tests, then the shipped kernels vs the float32 form, M = 1
    QCOMPILER_TRITON_AUTOTUNE=0 timeout 120 python3 -m pytest -x -q -p no:cacheprovider -p no:logging -rfEs \
      tests/backends/triton/test_triton_weight_only_gemv_row_half2.py tests/backends/triton/test_triton_weight_only_gemv_row.py \
      tests/backends/triton/test_triton_weight_only_linear_ops.py > "$OUT/tests_gemv.log" 2>&1
    echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_gemv.log" | tail -12
    SWEEP_GEMV_BEFORE=/nonexistent timeout ${SWEEP_S:-240} python3 benchmarks/sweep_gemv.py --production --ms 1 --formats w4 \
      --shapes "${SWEEP_SHAPES:-gate+up fused,qkv fused,down,q/o,1.1B gate+up fused,1.1B qkv fused,1.1B down,1.1B q/o}" --budget-s 150 \
      > "$OUT/sweep_gemv.log" 2>&1; echo "sweep rc=$?"; grep -E "^M=|copy" "$OUT/sweep_gemv.log" ;;
  user)
    timeout 250 python3 benchmarks/gpu_user_path.py --out "$OUT/gpu_user_path.json" > "$OUT/gpu_user_path.log" 2>&1
    echo "user rc=$?"; tail -40 "$OUT/gpu_user_path.log" ;;
  prefill)
    timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:logging -rfEs tests/runtime/test_prompt_graph.py \
      tests/runtime/test_prompt_attention.py > "$OUT/tests_prefill.log" 2>&1; echo "tests rc=$?"; tail -3 "$OUT/tests_prefill.log"
    timeout 320 python3 benchmarks/profile_prefill.py --shape 1.1b --layers 8 --decode-first --top 6 \
      --rows fp16-lean,qc-w4-weight-only,qc-int8-outlier --modes compiled,compiled-graph \
      --out "$OUT/profile_prefill.json" > "$OUT/profile_prefill.log" 2>&1; echo "profile rc=$?"
    grep -E "^==" "$OUT/profile_prefill.log" ;;
  8b|8b-peers|1.1b|1.1b-peers)
    shape=${stage%-peers}; layers=2; [ "$shape" = 1.1b ] && layers=${LAYERS:-8}
    rows=fp16-lean,$rows_qc; [ "$stage" != "$shape" ] && rows=fp16-lean,$rows_peers
    timeout 570 python3 benchmarks/bench_generate.py --shape "$shape" --layers $layers \
      --rows $rows --decode 33 --reps 3 --budget-s 450 \
      --out "$OUT/bench_generate_$stage.json" > "$OUT/bench_generate_$stage.log" 2>&1
    echo "bench rc=$?"; grep -E "^\| " "$OUT/bench_generate_$stage.log" | tail -20 ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
