#!/usr/bin/env bash
# The GPU run of issue 3 (CUDA kernels), from the repository root, in two stages that each fit
# one 10-minute call of the device tool:
#
#     bash benchmarks/gpu_run.sh tests    # 1. the whole test suite (CPU and CUDA backends),
#                                         # 2. the CUDA tests under compute-sanitizer memcheck
#     bash benchmarks/gpu_run.sh bench    # 3. benchmarks/gpu.py (kernels vs off vs CUDA graph
#                                         #    vs PyTorch eager and graphed),
#                                         # 4. `cnnx train --device cuda` on Fashion-MNIST,
#                                         #    eager twice, then with --cuda-graph
#     bash benchmarks/gpu_run.sh all      # both (about 10 minutes: may not fit one call)
#
# Step 4 needs the dataset beside the code, since the GPU machine has no network: first, on
# the machine that drives it, `mkdir -p .gpu-data && cp -r /usr/share/datasets/fashion-mnist
# .gpu-data/` (git ignores .gpu-data/), and name `.gpu-data` in the device tool's `carry`.
# Without it step 4 is skipped with a message.
# Extra arguments go to benchmarks/gpu.py (e.g. --quick). Logs go to $OUT when it is set (the
# device tool's output folder), else to ./gpu-run-logs. The exit status is non-zero when any
# step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="${OUT:-gpu-run-logs}"
mkdir -p "$LOG"
stage="${1:-all}"
[ $# -gt 0 ] && shift
case "$stage" in tests|bench|all) ;; *) echo "unknown stage '$stage': use tests, bench or all" >&2; exit 2;; esac
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOG/device.txt"

if [ "$stage" = tests ] || [ "$stage" = all ]; then
    python3 -c "from cnnx.backends import available_backends as a; print('backends:', a())" \
        | tee -a "$LOG/device.txt"
    # -rs lists what was skipped and why (CI, not this run, insists on nvcc and g++ for the
    # PTX and shim tests: a GPU image without g++ skips the shim here instead of failing)
    python3 -m pytest -q -rs -p no:cacheprovider 2>&1 \
        | tee "$LOG/pytest.txt" | tail -25 || status=1
    # memcheck sees an access past an array's end only where the array is an allocation of its
    # own: inside CuPy's memory pool it lands in the pool's other memory, unseen. So the kernel
    # tests run with the pool off (CNNX_CUPY_POOL=0, read by tests/conftest.py); the graph
    # tests keep it (a capture allocates from a pool of its own, cnnx/backends/cuda_graph.py).
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
        /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
    if [ -n "$sanitizer" ]; then
        CNNX_CUPY_POOL=0 "$sanitizer" --tool memcheck --error-exitcode 99 \
            python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda_backend.py \
            -k "not 2_pow_31" 2>&1 | tee "$LOG/memcheck.txt" | tail -15 || status=1
        "$sanitizer" --tool memcheck --error-exitcode 99 \
            python3 -m pytest -q -x -p no:cacheprovider tests/test_graph.py -k "not shim" 2>&1 \
            | tee -a "$LOG/memcheck.txt" | tail -15 || status=1
    else
        echo "compute-sanitizer not found: memcheck not run" | tee "$LOG/memcheck.txt"
        status=1
    fi
fi

if [ "$stage" = bench ] || [ "$stage" = all ]; then
    python3 benchmarks/gpu.py "$@" | tee "$LOG/benchmark.md" || status=1  # progress: stderr
    if [ -d .gpu-data/fashion-mnist ]; then
        runs=$(mktemp -d)
        # twice: the first run pays the kernel compiles (empty CuPy cache), the second does not
        for run in first second graph; do
            flag=""; [ "$run" = graph ] && flag="--cuda-graph"
            CNNX_DATA=.gpu-data python3 -m cnnx train --device cuda $flag --epochs 1 \
                --out "$runs/$run" 2>&1 | tee "$LOG/train-cuda-$run.txt" | tail -6 || status=1
        done
    else
        echo "skipped: cnnx train --device cuda (no .gpu-data/fashion-mnist; see the top of this file)"
    fi
fi

exit "$status"
