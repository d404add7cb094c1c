"""A sweep folder as ci/examples/slurm-shards.sh leaves it: `shard-1`, `shard-2` and their `merged/` run side by side,
made of synthetic checkpointing runs (tests/runs.py)."""

from __future__ import annotations

from pathlib import Path

from bench.merge import merge
from tests.runs import checkpointing_records, write_run


def sweep(root: Path, name: str, seed: int = 0, **kw) -> Path:
    """root/name holding two shards of one sweep (the checkpointing cases split in two) and the run merged from
    them."""
    records = checkpointing_records(seed=seed)
    folder = Path(root) / name
    # run_ids of their own, as two machines' runs have
    shards = [write_run(folder, f"shard-{i + 1}", records[i::2], run_id=f"{name}-shard-{i + 1}", **kw)
              for i in range(2)]
    merge(shards, folder / "merged")
    return folder
