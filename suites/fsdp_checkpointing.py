"""Sharding and checkpointing compound: the checkpointing suite's transformer under FSDP2 (fully_shard per block), one
torchrun rank per device, with each checkpointing variant; peak memory per rank and step time against world size.

Each rank trains on its own batch of the case's `batch` sequences (data parallel), so the job's tokens per step are
world_size x batch x seq. Memory is counted as in the checkpointing suite (CUDA allocator peaks; on CPU the
live-tensor tracker), per rank, beyond the sharded parameters and the batch: the all-gathered block parameters,
gradients and the activations the variant keeps. `param_bytes` is the rank's shard of the parameters.
"""

from __future__ import annotations

from bench.metrics import Metric
from bench.suite import Measurement, Relative, Suite, Workload, register, run_dtype
from bench.timing import time_fixed
from bench.work import Work
from impls.fsdp_checkpointing.shard import local_bytes, shard
from suites.checkpointing import (
    GRIDS,
    SHAPES,
    STEP_METRICS,
    Checkpointing,
    build_training_step,
    step_memory,
    training_step,
)


@register
class FsdpCheckpointing(Suite):
    name = "fsdp_checkpointing"
    description = "FSDP2 x activation checkpointing: peak memory per rank and step time against world size"
    # transformers' variants run on checkpointing's own model=hf_llama points, not under FSDP
    variants = {v: d for v, d in Checkpointing.variants.items() if v not in Checkpointing.libraries}
    world_sizes = (1, 2, 4, 8)
    relative = (
        Relative("mem_saving_x", "peak_mem_bytes", invert=True),
        Relative("time_overhead_x", "step_time_ms"),
    )
    metrics = (*STEP_METRICS, Metric("param_bytes", "exact", "lower", "bytes of the rank's shard of the parameters"))

    def grid(self, size, device):
        dtype = run_dtype(device)
        return [{**SHAPES[shape], **dims, "dtype": dtype} for shape, dims in GRIDS[size]]

    def workload(self, variant, params, device, target=None):
        # on meta (bench plan), as rank 0 of a fake process group at the case's world size: bench.plan_meta.fake_ranks
        import torch.distributed as dist

        model, _, _, _, step = build_training_step(variant, params, device, seed=dist.get_rank(), wrap=shard)
        return Workload(step, modules=(model,), clear=lambda: model.zero_grad(set_to_none=True))

    def measure(self, variant, params, device):
        import torch.distributed as dist

        # every rank builds the same weights (the runner seeds each alike), then shards them; each its own batch
        model, forward, x, target, step = training_step(variant, params, device, seed=dist.get_rank(), wrap=shard)
        peak, activation = step_memory(model, forward, x, target, device)
        # every rank the same number of steps; the two above warmed up (gathers' buffers, gloo's first collectives)
        timing = time_fixed(step, device, reps=3, warmup=0)
        work = Work("step_time", tokens=dist.get_world_size() * params["batch"] * params["seq"])
        metrics = {"peak_mem_bytes": peak, "activation_bytes": activation,
                   "param_bytes": local_bytes(model.parameters())}
        return Measurement(metrics, timed=timing, timings={"step_time": timing}, work=[work])
