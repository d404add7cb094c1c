"""A step's peak as the CPU allocator sees it with no dispatch mode active, to check the live-tensor tracker against
(bench.memory.TensorMemoryTracker, which is a mode, and so changes what backward runs)."""

from torch._C._profiler import _ExtraFields_Allocation
from torch.profiler import ProfilerActivity, profile

SCRATCH = 1024
"""Bytes the profiler sees and the tracker does not: Python numbers wrapped as 0-dim tensors before dispatch, index
tensors a kernel makes inside (index_put_'s nonzero of a boolean mask: 688 B in tests/bench/test_memory.py,
where a missed twin is 256 KiB)."""


def unobserved_peak(fn) -> int:
    """fn's peak as the CPU allocator saw it, no dispatch mode active: torch.profiler's allocation records (address,
    bytes; a free is negative), in order, summed. It counts kernels' own scratch too, which the tracker never sees.

    A free counts only where this window saw the allocation. The allocator's reporter remembers the size of every
    block allocated while any profiler ran and forgets none freed while none did, so a free here of an older block,
    or of a newer one at an address it remembers, would carry a size that is not this window's: fn must free nothing
    older, as the tracker assumes, and this keeps stale sizes out."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, acc_events=True) as prof:  # one window
        fn()
    records = []

    def walk(nodes):
        for node in nodes:
            if isinstance(node.extra_fields, _ExtraFields_Allocation):
                records.append((node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    assert records, "the profiler recorded no allocation"
    live = peak = 0
    held: dict[int, int] = {}
    for _, ptr, nbytes in sorted(records, key=lambda r: r[0]):
        if nbytes > 0:
            held[ptr] = nbytes
        elif ptr in held:
            nbytes = -held.pop(ptr)
        else:
            continue
        live += nbytes
        peak = max(peak, live)
    return peak
