"""FSDP x checkpointing figures: peak memory per rank, and step time, against world size, one line per
checkpointing variant (and machine): how sharding and checkpointing compound. Runs at several world sizes (one
`bench run --nproc-per-node N` each) are read together."""

from __future__ import annotations

import pandas as pd

from reports.figures._world_size import against_world_size

METRICS = ("peak_mem_bytes", "rank_min_peak_mem_bytes", "activation_bytes", "param_bytes", "step_time_ms",
           "tokens_per_s", "mem_saving_x", "time_overhead_x")


def figures(frame: pd.DataFrame) -> list:
    return against_world_size(frame, "FSDP2 x checkpointing", ("d_model", "layers", "seq", "batch"))
