"""A sweep folder as ci/examples/slurm-shards.sh leaves it: `shard-1`, `shard-2` and their `merged/` run side by side,
made of synthetic checkpointing runs (tests/runs.py)."""

from __future__ import annotations

from pathlib import Path

from bench.merge import merge
from bench.records import read_run_json, write_run_json
from tests.runs import checkpointing_records, write_run


def sweep(root: Path, name: str, seed: int = 0, **kw) -> Path:
    """root/name holding two shards of one sweep (the checkpointing cases split in two) and the run merged from
    them."""
    records = checkpointing_records(seed=seed)
    folder = Path(root) / name
    shards = [write_run(folder, f"shard-{i + 1}", records[i::2], **kw) for i in range(2)]
    for shard in shards:  # run_ids of their own, as two machines' runs have
        write_run_json(shard, {**read_run_json(shard), "run_id": f"{name}-{shard.name}"})
    merge(shards, folder / "merged")
    return folder
