#!/usr/bin/env bash
# CUDA checks of the backward pass, in one command, within 8 minutes (for a session with a GPU):
#   1. the cuda-marked tests (tests/test_cuda.py: CUDA vs CPU scores and greedy results, no host sync
#      inside the layer loop);
#   2. the benchmark on CUDA (SmallVGG geometry, toy, and VGG16 at batch 32 with TF32):
#      writes ${OUT:-runs}/bench_cuda/metrics.json and prints its table.
# Usage: bash scripts/gpu_check.sh      (from the repository root)
set -u
OUT_DIR="${OUT:-runs}/bench_cuda"
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 150 python -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py || status=1
timeout 300 python -m scripts.bench --device cuda --out "$OUT_DIR" --repeats 5 --naive-repeats 1 \
    --batch-repeats 3 --vgg16-repeats 3 || status=1
exit $status
