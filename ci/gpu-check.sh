#!/usr/bin/env bash
# The short GPU check for a contributor on a lent GPU: the CUDA paths the CPU CI skips (CUDA timing, allocator
# peaks, NVML telemetry, bf16 gradients of every variant), then every suite at quick size on cuda (a few minutes),
# with its report and environment, packed into OUT/gpu-check.tar.gz. Exits non-zero if any step failed, after
# running them all.
# Usage (repo root, installed or with PYTHONPATH=.):  bash ci/gpu-check.sh OUT [SUITE=SIZE ...]
#   e.g. bash ci/gpu-check.sh /tmp/out checkpointing=full   also runs checkpointing at full size into OUT/checkpointing-full
set -uo pipefail
out=${1:?usage: ci/gpu-check.sh OUT [SUITE=SIZE ...]}
shift
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
rc=0
nvidia-smi -L || rc=1
python3 -m bench env --json > "$out/env.json" || rc=1
python3 -m pytest -q -rs -p no:cacheprovider tests/bench tests/impls > "$out/pytest.log" 2>&1 || rc=1
tail -n 5 "$out/pytest.log"
python3 -m bench run --size quick --device cuda --out "$out/quick" || rc=1
for extra in "$@"; do
  suite=${extra%%=*} size=${extra#*=}
  python3 -m bench run "$suite" --size "$size" --device cuda --out "$out/$suite-$size" || rc=1
done
tar -czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")" || rc=1  # beside OUT, not inside it
mv "$out.tar.gz" "$out/gpu-check.tar.gz" || rc=1
echo "exit $rc: $out/gpu-check.tar.gz"
exit "$rc"
