#!/usr/bin/env bash
# The GPU check: the CUDA paths for real (CUDA timing, allocator peaks, NVML telemetry), then the suites on the GPU.
# Usage (from the repo root, on a CUDA machine):  bash ci/gpu-check.sh OUT_DIR [SIZE]
# Writes OUT_DIR/env.json, OUT_DIR/pytest.log, OUT_DIR/quick/ (all suites) and OUT_DIR/checkpointing-SIZE/.
set -uo pipefail
out=${1:?usage: ci/gpu-check.sh OUT_DIR [SIZE]}
size=${2:-full}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -m bench env --json > "$out/env.json"
# The tests whose CUDA paths are skipped on CPU, run for real here.
python3 -m pytest -q tests/bench 2>&1 | tee "$out/pytest.log" | tail -5
python3 -m bench run --size quick --device cuda --out "$out/quick"
python3 -m bench run checkpointing --size "$size" --device cuda --out "$out/checkpointing-$size"
