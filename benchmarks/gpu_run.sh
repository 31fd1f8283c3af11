#!/usr/bin/env bash
# The one command for the GPU run of issue 3 (CUDA kernels), from the repository root:
#
#     bash benchmarks/gpu_run.sh [benchmark options, e.g. --quick]
#
# 1. the GPU tests and the CPU-shim tests; 2. the GPU tests again under compute-sanitizer
# memcheck (all but the >2^31-element test, too slow under it); 3. benchmarks/gpu.py.
# Logs go to $OUT when it is set (the device tool's output folder), else to ./gpu-run-logs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="${OUT:-gpu-run-logs}"
mkdir -p "$LOG"
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOG/device.txt"

python3 -m pytest -q -rs tests/test_cuda_backend.py tests/test_kernels_cpu_shim.py 2>&1 \
    | tee "$LOG/pytest.txt" || status=1

compute-sanitizer --tool memcheck --error-exitcode 99 \
    python3 -m pytest -q -x tests/test_cuda_backend.py -k "not 2_pow_31" 2>&1 \
    | tee "$LOG/memcheck.txt" | tail -15 || status=1

python3 benchmarks/gpu.py "$@" | tee "$LOG/benchmark.md" || status=1  # progress lines: stderr

exit "$status"
