"""A step's peak as the CPU allocator sees it with no dispatch mode active, to check the live-tensor tracker against
(bench.memory.TensorMemoryTracker, which is a mode, and so changes what backward runs)."""

from torch.profiler import ProfilerActivity, profile

SCRATCH = 1024
"""Bytes the profiler sees and the tracker does not: Python numbers wrapped as 0-dim tensors before dispatch, index
tensors a kernel makes inside (index_put_'s nonzero of a boolean mask: 688 B in tests/bench/test_memory.py,
where a missed twin is 256 KiB)."""


def unobserved_peak(fn) -> int:
    """fn's peak as the CPU allocator saw it, no dispatch mode active: torch.profiler's allocation timeline (every
    allocation and free, in order), summed. It counts kernels' own scratch too, which the tracker never sees. It also
    counts the free of an older tensor, if one was allocated while a profiler ran before (the allocator's reporter
    remembers those sizes only): fn must free nothing older, as the tracker assumes."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    assert events, "the profiler recorded no allocation"
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak
