#!/usr/bin/env bash
# PPO's GPU checks in one run, under 10 minutes on one H100/H200: the CUDA tests (tests marked gpu,
# the offload of the reference and reward model among them), the card's bf16 matmul and memory-copy
# peaks as measured, then bench/ppo_vs_trl.py on a 152M-parameter model in bf16 on both sides, with the
# eager sampler and with the compiled one (its update MFU and generation bandwidth use). At the end one
# JSON line per figure, each naming the card, on stdout and in $OUT/figures.jsonl (default bench-out/).
#
#   DRY_RUN=1 bash bench/gpu_checks.sh            # the same steps on the CPU at toy sizes: checks the script
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
: > "$OUT/bench.log"
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
if [ -n "${DRY_RUN:-}" ]; then
  DEVICE=cpu TEST_MARKS="gpu or not gpu" PRECISION=fp32
  MODEL=(--layers 1 --width 64 --heads 2 --iterations 3 --warmup-iterations 1 --batch-size 8 --micro-batch-size 8
         --response-length 8 --repeats 1)
  TESTS=(tests/policy_optimization/test_engines.py::test_gradient_checkpointing_and_offload_keys_run_the_stage)
  echo "dry run on the CPU" | tee "$OUT/device.txt"
else
  DEVICE=cuda TEST_MARKS=gpu PRECISION=bf16
  # 152M parameters (12 layers, 1024 wide), 64 episodes per iteration, 64-token responses. The first
  # two iterations are warm-up on both sides (the compiled sampler's compile, cuBLAS, the allocator).
  MODEL=(--layers 12 --width 1024 --heads 16 --iterations 8 --warmup-iterations 2 --batch-size 64
         --micro-batch-size 32 --response-length 64 --repeats 1)
  TESTS=(tests/policy_optimization/test_ppo_training.py tests/policy_optimization/test_models_and_ppo_step.py tests/test_bootstrap.py tests/policy_optimization/test_engines.py)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
fi

timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -m "$TEST_MARKS" "${TESTS[@]}" 2>&1 \
  | tee "$OUT/gpu-tests.log" | tail -5

# The card's own ceilings as measured: a bf16 GEMM (8192^2; 1024^2 on the dry run) and a device copy.
timeout 60 "$PYTHON" - "$DEVICE" <<'PEAKS' 2>&1 | tee -a "$OUT/bench.log" | tail -1
import json, sys, time
import torch
device = sys.argv[1]
card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
size, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
def timed(step, repeats):
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats
a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
matmul = 2 * size**3 / timed(lambda: a @ b, 20)
source = torch.empty(2**28 if device == "cuda" else 2**24, dtype=torch.uint8, device=device)
target = torch.empty_like(source)
copy = 2 * source.numel() / timed(lambda: target.copy_(source), 20)  # read + write
print(json.dumps({"bench": "card_peaks", "device": card, "matmul_tflops_per_s": round(matmul / 1e12, 2),
                  "matmul_dtype": str(dtype), "copy_gb_per_s": round(copy / 1e9, 1)}))
PEAKS

for sampler in "" "--compile-generation"; do
  [ -n "${DRY_RUN:-}" ] && [ -n "$sampler" ] && continue  # the compiled sampler's CPU compile adds nothing here
  timeout "${BENCH_TIMEOUT:-180}" "$PYTHON" bench/ppo_vs_trl.py --device "$DEVICE" --precision "$PRECISION" \
    "${MODEL[@]}" "${TRL_ARGS[@]}" $sampler 2>&1 | tee -a "$OUT/bench.log" | tail -1
done

# One JSON line per figure, each naming the card.
"$PYTHON" - "$OUT/bench.log" <<'FIGURES' | tee "$OUT/figures.jsonl"
import json, sys
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    report = json.loads(line)
    where = {"device": report["device"], "bench": report["bench"]}
    if report["bench"] == "card_peaks":
        for name in ("matmul_tflops_per_s", "copy_gb_per_s"):
            print(json.dumps({**where, "figure": name, "value": report[name]}))
        continue
    context = {**where, "precision": report["precision"], "model_params": report["model_params"]}
    figures = {"ours_episodes_per_s": report["ours"]["episodes_per_s"]["median"],
               "trl_episodes_per_s": report["trl"]["episodes_per_s"]["median"], "ratio_vs_trl": report["ratio"],
               "update_mfu": report["update_mfu"], "update_gflops_per_s": report["update_gflops_per_s"],
               "generation_bandwidth_util": report["generation_bandwidth_util"]}
    compiled = report.get("stack_level", {}).get("ours_compiled")
    if compiled:  # the second run: only its compiled side is new (not the same work as TRL's: stack level)
        figures = {"ours_episodes_per_s": compiled["episodes_per_s"]["median"],
                   "stack_ratio_vs_trl": report["stack_level"]["ratio"], "update_mfu": compiled["update_mfu"],
                   "generation_bandwidth_util": compiled["generation_bandwidth_util"]}
    for name, value in figures.items():
        sampler = "compiled" if compiled else "eager"
        print(json.dumps({**context, "sampler": sampler, "figure": name, "value": value}))
FIGURES
