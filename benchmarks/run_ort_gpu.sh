#!/usr/bin/env bash
# The ONNX Runtime GPU run of issue #13, on one warm GPU machine, after parts 1-4 of onnxruntime-gpu
# were stashed by `bash .ortgpu/device-ort-gpu.sh stash K` in the runs just before (../shared/GPU.md).
# Carries: .ortgpu/p5, .ortgpu/device-ort-gpu.sh, .whl (onnxscript, onnx_ir, ml_dtypes), qcompiler, benchmarks.
# Writes $OUT/bench_onnxruntime.json, $OUT/bench_ort_decode.json and the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
bash .ortgpu/device-ort-gpu.sh stash 5 >/dev/null && bash .ortgpu/device-ort-gpu.sh install || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/oxs .whl/*.whl || exit 1
export PYTHONPATH=.:/tmp/ortsite:/tmp/oxs PYTHONUNBUFFERED=1 OUT=${OUT:-.}
LD_LIBRARY_PATH=$(python3 -c "import nvidia,os,glob;b=os.path.dirname(nvidia.__path__[0]);print(':'.join(glob.glob(b+'/nvidia/*/lib')+glob.glob(b+'/nvidia/cu13/lib')))"):${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
python3 -c "import onnxruntime as o, torch, transformers; print(o.__version__, o.get_available_providers(), torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
timeout "${TABLE_S:-130}" python3 benchmarks/bench_onnxruntime.py --variants "fp16,qc ort-cuda,qc plan*" --iters 30 2>&1 | tee "$OUT/table.log" | grep -v "^\s*$"
timeout "${DECODE_S:-100}" python3 benchmarks/bench_ort_decode.py --budget-s "${DECODE_BUDGET_S:-55}" 2>&1 | tee "$OUT/decode.log" | grep -v "^\s*$"
