#!/usr/bin/env bash
# PPO's GPU checks in one run: the CUDA tests, then bench/ppo_vs_trl.py on a 152M-parameter model
# with the eager sampler and with the compiled one. Logs and JSON lines go to $OUT (default bench-out/).
#
#   bash bench/gpu_checks.sh                      # a machine with the project's venv and a TRL 0.29.1 Python
#   WHEELS=.whl bash bench/gpu_checks.sh          # an offline machine: install wheels from .whl/ours, .whl/trl
#
# The wheels, fetched here for the GPU machine's Python 3.12 (its torch stays as it is):
#   get() { pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
#   get .whl/ours trl==1.16.0 transformers==5.24.0 pydantic==2.14.0 pydantic-core==2.50.0 \
#     annotated-types typing-inspection datasets==4.4.1 dill multiprocess
#   get .whl/trl trl==0.29.1 transformers==4.57.6 tokenizers==0.22.1 huggingface-hub==0.36.0 \
#     datasets==4.4.1 dill multiprocess
# TRL_PYTHON names a Python that imports TRL 0.29.1 (default: the one built from $WHEELS/trl, or the
# bench's own bench/.venv-trl). BENCH_TIMEOUT bounds each bench run (seconds, default 240).
set -u
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
TRL_ARGS=()
if [ -n "${WHEELS:-}" ]; then
  # no package index here: each side's wheels go to their own directory, on top of the machine's torch
  install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$1" "${@:2}"; }
  install /tmp/ours-site "$WHEELS"/ours/*.whl && install /tmp/trl-site "$WHEELS"/trl/*.whl || exit 1
  export PYTHONPATH=/tmp/ours-site
  printf '#!/bin/sh\nPYTHONPATH=/tmp/trl-site exec python3 "$@"\n' > /tmp/trl-python && chmod +x /tmp/trl-python
  TRL_PYTHON=${TRL_PYTHON:-/tmp/trl-python}
fi
[ -n "${TRL_PYTHON:-}" ] && TRL_ARGS=(--trl-python "$TRL_PYTHON")
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_ppo_training.py tests/test_models_and_ppo_step.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -5

# 152M parameters (12 layers, 1024 wide), 64 episodes per iteration, 64-token responses. The first
# two iterations are warm-up on both sides (the compiled sampler's compile, cuBLAS, the allocator).
for sampler in "" "--compile-generation"; do
  timeout "${BENCH_TIMEOUT:-240}" "$PYTHON" bench/ppo_vs_trl.py --device cuda --layers 12 --width 1024 --heads 16 \
    --iterations 8 --warmup-iterations 2 --batch-size 64 --micro-batch-size 32 --response-length 64 --repeats 1 \
    "${TRL_ARGS[@]}" $sampler 2>&1 | tee -a "$OUT/bench.log" | tail -2
done
