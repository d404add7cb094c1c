#!/bin/bash
# One sweep split over a Slurm array, one GPU node per shard, then merged into one run directory and one report.
#   sbatch ci/examples/slurm-shards.sh                  # from the repository root, with techbench installed
# The merge job depends on the whole array (afterany: a failed shard still contributes what it finished).
#SBATCH --job-name=techbench-shard
#SBATCH --array=1-4
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --time=06:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
N=${SLURM_ARRAY_TASK_COUNT:-4}
SWEEP=${TECHBENCH_SWEEP:-sweeps/$SLURM_ARRAY_JOB_ID}
mkdir -p "$SWEEP"
if [ "${SLURM_ARRAY_TASK_ID}" = "1" ]; then
    # the merge and report, queued once, after every shard of this array has ended
    sbatch --dependency="afterany:${SLURM_ARRAY_JOB_ID}" --job-name=techbench-merge --time=00:30:00 \
        --output="$SWEEP/merge.out" \
        --wrap="bench merge $SWEEP --out $SWEEP/merged && bench report $SWEEP/merged -o $SWEEP/merged/report.html"
fi
bench run --size "${TECHBENCH_SIZE:-full}" --device cuda --shard "${SLURM_ARRAY_TASK_ID}/${N}" \
    --out "$SWEEP/shard-${SLURM_ARRAY_TASK_ID}"
