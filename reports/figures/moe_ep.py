"""Expert-parallel MoE figures: peak memory per rank and step time against world size, EP against replicated
experts, one line per variant (and machine); runs at several world sizes are read together."""

from __future__ import annotations

import pandas as pd

from reports.figures._world_size import against_world_size

METRICS = ("step_time_ms", "tokens_per_s", "peak_mem_bytes", "param_bytes", "alltoall_bytes", "alltoall_time_ms",
           "alltoall_share", "allreduce_bytes", "speedup_x", "mem_saving_x")


def figures(frame: pd.DataFrame) -> list:
    return against_world_size(frame, "Expert parallelism", ("dim", "experts", "top_k", "hidden", "tokens"))
