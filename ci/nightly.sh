#!/usr/bin/env bash
# Nightly GPU job, portable to any CI: every suite at full size on the GPU, the run added to the history store, the
# dashboard rebuilt, and the run compared against the last good nights of its size and device and against the committed
# baseline of this GPU (ci/baselines/<gpu>/nightly/) where that is of its size and device too (a change of
# TECHBENCH_SIZE or TECHBENCH_DEVICE, or the runner's GPU, starts a fresh comparison set). Exits 1 when a run case
# failed or a comparison found a regression that --fail-on-regression gates (not a timing judged from one run a side),
# or, where nothing compares the night, most of its timed cases were contended, after doing every step, so the
# dashboard is published either way.
#
# State lives under TECHBENCH_HOME (default .nightly/), which the CI must keep between nights:
#   runs/<utc-stamp>/   each night's run directory (GOOD marks a night that exited 0)
#   history/            the Parquet history store          site/   the dashboard
#   confirm/<stamp>/    the cases of a night's slower timings, run again before they fail it (ci/confirm.py), and
#                       their comparison page; the night's confirm.txt says what became of them
#   cache/              the models the suites train (TECHBENCH_CACHE, unless set): kept, so that the quality metrics
#                       of a night come from the weights of the night before, not from a retrain on a GPU whose
#                       kernels add in any order, which the dashboard would read as a change of an exact metric
# Environment: TECHBENCH_HOME, TECHBENCH_SIZE (full), TECHBENCH_DEVICE (cuda), TECHBENCH_THRESHOLD (5, percent),
# TECHBENCH_GOOD_NIGHTS (5: how many recent good nights form the comparison set).
# Accepting an intended change: `touch RUNS/<night>/GOOD` on the night that shows it, and refresh the baseline.
set -uo pipefail
home=$(realpath -m "${TECHBENCH_HOME:-.nightly}")  # absolute, before the cd: artifact uploaders refuse ".."
export TECHBENCH_CACHE="${TECHBENCH_CACHE:-$home/cache}"
cd "$(dirname "$0")/.."
size=${TECHBENCH_SIZE:-full}
device=${TECHBENCH_DEVICE:-cuda}
threshold=${TECHBENCH_THRESHOLD:-5}
python=python3
bench=("$python" -m bench)
run="$home/runs/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$home/runs"
rc=0

"${bench[@]}" env
"${bench[@]}" run --size "$size" --device "$device" --out "$run" || rc=1
"${bench[@]}" history add "$run" --store "$home/history" || rc=1
"${bench[@]}" dashboard "$home/history" -o "$home/site" --threshold "$threshold" || rc=1

# The run directories among $2... of the same size, device type and hardware (the GPU's name, or the CPU's for a CPU
# run) as run directory $1, from each run.json: a night of another size or device (TECHBENCH_SIZE or TECHBENCH_DEVICE
# changed), or from another GPU (the runner moved), times other work, never a side beside this one. (With "kind": the
# words for run directory $1; with "gpu": the folder of ci/baselines/ its hardware's baseline lies in, the name of the
# GPU it ran on lowercased with dashes for spaces, or cpu.)
same_kind() {
  "$python" - "$@" <<'PY'
import json, sys
from bench.env import measured_gpu  # reads run.json's env only: no torch
def gpu_and_meta(d):
    try:
        with open(f"{d}/run.json", encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None, None
    if not isinstance(m, dict):
        return None, None
    gpu = measured_gpu(m.get("device"), m.get("env")) or {}
    return (str(gpu["name"]) if gpu.get("name") else None), m
def kind(d):
    gpu, m = gpu_and_meta(d)
    if m is None:
        return None
    env = m.get("env") if isinstance(m.get("env"), dict) else {}
    return m.get("size"), str(m.get("device") or "").partition(":")[0], gpu or str(env.get("cpu_model"))
if sys.argv[1] == "gpu":
    gpu, _ = gpu_and_meta(sys.argv[2])
    print(gpu.lower().replace(" ", "-") if gpu else "cpu")
    sys.exit()
if sys.argv[1] == "kind":
    k = kind(sys.argv[2])
    print(f"size {k[0]} on {k[1]} ({k[2]})" if k else "")
    sys.exit()
want = kind(sys.argv[1])
for d in sys.argv[2:]:
    if want is not None and kind(d) == want:
        print(d)
PY
}
kind=$(same_kind kind "$run")

# A line saying that most of run directory $1's timed cases were contended (other work ran while they were timed:
# the run measured the load, not the code), or nothing. compare fails such a NEW run; a night that nothing compares
# must not pass on it either, or it is marked GOOD and the later nights are compared against the load it measured.
disturbed() {
  "$python" - "$1" <<'PY'
import sys
from bench.records import scan_records
try:
    records = scan_records(f"{sys.argv[1]}/records.jsonl").records
except Exception:  # noqa: BLE001 - a records file that cannot be read is for history add and compare to name
    sys.exit()
flags = [r.metrics.get("contended") for r in records if r.status == "ok"]
timed, hit = sum(f is not None for f in flags), flags.count(True)
if 2 * hit > timed:
    print(f"{hit} of its {timed} timed cases were contended (other work ran while they were timed): the night "
          "measured the load, not the code, and is not GOOD; rerun it on a quiet machine (bench doctor)")
PY
}
[ -n "$kind" ] || kind="size $size on $device"

# Against the last good nights of tonight's size and device, as one set: several runs give compare the run-to-run
# noise to judge a change by, which one night against one night cannot (see `bench compare`).
good="$home/last-good"
rm -rf "$good" && mkdir -p "$good"
mapfile -t goods < <(for d in "$home"/runs/*/; do [ -f "$d/GOOD" ] && echo "${d%/}"; done | sort)
[ "${#goods[@]}" -gt 0 ] && same_kind "$run" "${goods[@]}" | tail -n "${TECHBENCH_GOOD_NIGHTS:-5}" |
  while IFS= read -r d; do ln -s "$d" "$good/$(basename "$d")"; done
if [ ! -f "$run/run.json" ]; then  # not a night of another kind: no night at all (no GPU, a bad setting)
  echo "bench run wrote no run.json in $run (it failed before running a case: see above): nothing compared"
elif [ -n "$(ls -A "$good")" ]; then
  # slower timings alone are measured again before they fail the night (ci/confirm.py): a one-off of the machine is
  # not in the rerun, a slowdown of the code is; any other failure of compare (exit 2, bad input) fails the night
  "${bench[@]}" compare "$good" "$run" --threshold "$threshold" --fail-on-regression \
    -o "$run/compare-last-good.html"
  case $? in
    0) ;;
    1) "$python" ci/confirm.py --python "$python" "$good" "$run" "$home/confirm/$(basename "$run")" "$threshold" ||
         rc=1 ;;
    *) rc=1 ;;
  esac
else
  if [ "${#goods[@]}" -gt 0 ]; then
    echo "no earlier good night of $kind (the ${#goods[@]} good night(s) in $home/runs are of another size, device" \
      "or hardware):" \
      "this night starts a fresh baseline, compared against nothing"
  else
    echo "no earlier good night in $home/runs: nothing to compare against yet"
  fi
  said=$(disturbed "$run")
  [ -z "$said" ] || { echo "disturbed: $said"; rc=1; }
fi

baseline="ci/baselines/$(same_kind gpu "$run")/nightly"  # from run.json: no second torch import to name the GPU
if [ ! -f "$run/run.json" ]; then
  :  # said above
elif [ -f "$baseline/run.json" ] && [ -n "$(same_kind "$run" "$baseline")" ]; then
  "${bench[@]}" compare "$baseline" "$run" --threshold "$threshold" --fail-on-regression \
    -o "$run/compare-baseline.html" || rc=1
elif [ -f "$baseline/run.json" ]; then
  echo "the committed baseline at $baseline is not of $kind: not compared (commit a night of this size and device)"
else
  echo "no committed baseline at $baseline (commit a good night's run directory there to enable this check)"
fi

[ "$rc" -eq 0 ] && touch "$run/GOOD"
[ -n "${GITHUB_OUTPUT:-}" ] && echo "run=$run" >> "$GITHUB_OUTPUT"
echo "run: $run  site: $home/site/index.html  exit: $rc"
# a failed night stays out of the comparison set: say how to let it in, where its failures are the machine's
[ "$rc" -eq 0 ] || [ ! -f "$run/run.json" ] ||
  echo "not GOOD: the next nights compare against the last GOOD ones; if this night's only failures are timings" \
    "you judge to be the machine, or a change you accept, run: touch $run/GOOD"
exit "$rc"
