#!/usr/bin/env bash
# The GPU check: the CUDA paths for real (CUDA timing, allocator peaks, NVML telemetry, CUDA gradients of every
# variant), then the suites on the GPU. Exits non-zero if any step failed, after running them all.
# Usage (from the repo root, on a CUDA machine):  bash ci/gpu-check.sh OUT_DIR [SIZE]
# Writes OUT_DIR/env.json, OUT_DIR/pytest.log, OUT_DIR/quick/ (all suites) and OUT_DIR/checkpointing-SIZE/.
set -uo pipefail
out=${1:?usage: ci/gpu-check.sh OUT_DIR [SIZE]}
size=${2:-full}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
rc=0
nvidia-smi -L || rc=1
python3 -m bench env --json > "$out/env.json" || rc=1
# The tests whose CUDA paths are skipped on CPU, run for real here.
python3 -m pytest -q -rs tests/bench tests/impls > "$out/pytest.log" 2>&1 || rc=1
tail -5 "$out/pytest.log"
python3 -m bench run --size quick --device cuda --out "$out/quick" || rc=1
python3 -m bench run checkpointing --size "$size" --device cuda --out "$out/checkpointing-$size" || rc=1
exit $rc
