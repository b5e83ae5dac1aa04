#!/usr/bin/env bash
# The ONNX Runtime GPU run of issue #13 (second round), on one warm GPU machine, after parts 1-4 of
# onnxruntime-gpu were stashed by `bash .ortgpu/device-ort-gpu.sh stash K` in the runs just before
# (../shared/GPU.md). Run from the project root or a worktree of it (.wt/<name>); .ortgpu is looked
# for here, then two folders up (the main checkout). Carries: .ortgpu/p5, .ortgpu/device-ort-gpu.sh,
# and .whl (onnxscript 0.7.2 + onnx_ir 1.1.0, optional: the image has onnxscript).
#   1. five exports at once, in parallel processes (16 cores): the decode rows' KV-cache files
#      (bench_ort_decode.py --phase export: fp16, qc int8-outlier, qc w4-weight-only, each with the
#      same model's PyTorch greedy tokens) and the fp16 / plan files of ort_ab_profile.py;
#   2. then, one at a time on the GPU: decode tok/s (--phase time), and fp16 vs plan timed A B A B at
#      M = 16 / 2048 with ORT's profiler and CUPTI kernel times (ort_ab_profile.py --phase time).
# Writes to $OUT: setup.log, exports.log, decode.log, ab.log, bench_ort_decode.json, ort_ab_profile.json.
# TINY=1: the same on the CPU EP at toy sizes (no onnxruntime-gpu), to check the script.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/out} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
mkdir -p "$OUT"
BLOCKS=${BLOCKS:-4}; ROUNDS=${ROUNDS:-4}
if [[ -z ${TINY:-} ]]; then
  ORTGPU=$([[ -d .ortgpu ]] && echo "$PWD" || readlink -f ../..)
  (cd "$ORTGPU" && bash .ortgpu/device-ort-gpu.sh stash 5 >/dev/null && bash .ortgpu/device-ort-gpu.sh install) \
    > "$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
  export PYTHONPATH=.:benchmarks:/tmp/ortsite:/tmp/oxs
  LD_LIBRARY_PATH=$(python3 -c "import nvidia,os,glob;b=os.path.dirname(nvidia.__path__[0]);print(':'.join(glob.glob(b+'/nvidia/*/lib')+glob.glob(b+'/nvidia/cu13/lib')))"):${LD_LIBRARY_PATH:-}
  export LD_LIBRARY_PATH
  DECODE=(--blocks "$BLOCKS"); AB=(); PY=python3
else
  export PYTHONPATH=.:benchmarks; DECODE=(--tiny --prompt 8 --new 16); AB=(--small); PY=${PY:-python3}
fi
if ls .whl/onnx*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/oxs .whl/onnx*.whl >> "$OUT/setup.log" 2>&1 || exit 1
fi
$PY -c "import onnxruntime as o, onnxscript, onnx_ir, torch, transformers; print(o.__version__, o.get_available_providers(), 'onnxscript', onnxscript.__version__, 'onnx_ir', onnx_ir.__version__, torch.__version__, transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" 2>&1 | tee -a "$OUT/setup.log"
if [[ -z ${TINY:-} ]]; then
  $PY -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" || exit 1
fi
BASE=/dev/shm; (( $(df --output=avail -k /dev/shm 2>/dev/null | tail -1 || echo 0) > 20000000 )) || BASE=/tmp
DD=$(mktemp -d "$BASE/decode-XXXX"); DA=$(mktemp -d "$BASE/ab-XXXX"); LOGS=$(mktemp -d)
echo "files in $DD and $DA; $(nproc) cores" | tee -a "$OUT/setup.log"
t0=$(date +%s)
for row in fp16 "qc int8-outlier" "qc w4-weight-only"; do
  timeout "${EXPORT_S:-170}" $PY benchmarks/bench_ort_decode.py --phase export --rows "$row" --dir "$DD" "${DECODE[@]}" \
    > "$LOGS/decode_${row// /_}.log" 2>&1 &
done
for row in fp16 plan; do
  timeout "${EXPORT_S:-170}" $PY benchmarks/ort_ab_profile.py --phase export --rows "$row" --dir "$DA" "${AB[@]}" \
    > "$LOGS/ab_$row.log" 2>&1 &
done
wait
for f in "$LOGS"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > "$OUT/exports.log"
grep -h "exported in\|Error" "$OUT/exports.log"; echo "exports: $(( $(date +%s) - t0 )) s wall"
timeout "${DECODE_S:-70}" $PY benchmarks/bench_ort_decode.py --phase time --dir "$DD" "${DECODE[@]}" 2>&1 | tee "$OUT/decode.log"
rm -rf "$DD"
timeout "${AB_S:-100}" $PY benchmarks/ort_ab_profile.py --phase time --dir "$DA" --rounds "$ROUNDS" "${AB[@]}" 2>&1 | tee "$OUT/ab.log"
rm -rf "$DA" "$LOGS"
echo "total: $(( $(date +%s) - t0 )) s after setup"
