#!/usr/bin/env bash
# The GPU check for a lent GPU or a GPU runner: what could disturb timings there (bench doctor --json, into
# OUT/doctor.json), the CUDA tests the CPU CI skips, plus a curated quick run that reaches every suite's CUDA paths, in
# at most 7 minutes (--budget-s), packed into OUT/gpu-check.tar.gz (the allocator snapshots and the profiler's traces
# into two more). See ci/gpu_check.py and ci/README.md (what each step proves, and how long it takes).
# Usage (repo root, installed or not):  bash ci/gpu-check.sh OUT [full] [SUITE=SIZE ...] [--budget-s S] [--device D]
#   bash ci/gpu-check.sh /tmp/gpu                    the 7-minute check
#   bash ci/gpu-check.sh /tmp/gpu full               then every suite at full size (no budget unless given)
#   bash ci/gpu-check.sh /tmp/gpu --device cpu       a dry run of the steps and the budget logic on a CPU
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$root" PYTHONUNBUFFERED=1
exec python3 "$root/ci/gpu_check.py" "$@"
