#!/usr/bin/env bash
# The GPU checks of issue 14 in one command, for the first session that is lent a GPU.
#
# It runs the real-device tests (`pytest -m gpu`, without their cupy_api twins, which CI
# runs anyway) and the GPU benchmark rows (benchmarks/bench_gpu.py: cifar10_quick and
# CaffeNet training iterations at batch 128, dlsoft against PyTorch CUDA), and leaves the
# logs under $OUT (the device tool's folder that comes back) or ./gpu_check_out.
# About 4-6 minutes on an H100/H200; give the run timeout_s 540 to leave room for a rerun.
#
# Prepare once, in the checkout the session runs from (the lent image has cupy-cuda13x,
# torch with CUDA, numpy, h5py, protobuf, Pillow, pytest, but not lmdb):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl lmdb==1.7.5
# then call the device tool:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
# and record the results (pytest summary, the benchmark table) in the issue's note and the README.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, cupy, numpy, torch; print(sys.version.split()[0], 'cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  python3 -c "from dlsoft.backend import gpu_count; print('dlsoft sees', gpu_count(), 'GPU(s)')"
} 2>&1 | tee "$out/environment.txt"

# 1. Every GPU-vs-CPU test on the real device (../shared does not travel: the few that read it skip).
timeout 240 python3 -m pytest -m "gpu and not cupy_api" -q -p no:cacheprovider -o addopts="" -rfEs 2>&1 |
  tee "$out/pytest_gpu.txt"
tests=$?

# 2. The benchmark rows (issue 14's target: at most 2x PyTorch CUDA's time per iteration).
timeout 200 python3 benchmarks/bench_gpu.py --batch 128 --iters 10 2>&1 | tee "$out/bench_gpu.txt"
bench=$?

echo "pytest exit $tests, benchmark exit $bench" | tee -a "$out/environment.txt"
exit $(( tests || bench ))
