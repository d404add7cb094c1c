"""The bytes torch's CUDA caching allocator reports for a step planned on meta (`CachingAllocatorModel`).

torch.cuda.max_memory_allocated counts the allocator's blocks, not the tensors in them, and memory_reserved its
segments (what it took from the driver). The plan feeds this model every storage the live-tensor tracker sees, in
order, so a CUDA target's prediction is what those counters will say. The rules are the allocator's, with its default
configuration (PYTORCH_CUDA_ALLOC_CONF unset), from c10/cuda/CUDACachingAllocator.cpp:

- a request is rounded up to a multiple of 512 B (kMinBlockSize);
- requests up to 1 MiB (kSmallSize) come from the small pool, carved from 2 MiB segments; larger ones from the large
  pool, from 20 MiB segments below 10 MiB (kLargeBuffer, kMinLargeAlloc) and otherwise from a segment of their own,
  rounded up to 2 MiB (kRoundLarge);
- the free block taken is the smallest that fits (then the lowest address; a new segment is assumed above the
  others) among the blocks of the stream it is asked on: a stream's blocks and segments serve that stream only
  (FSDP2's reduce-scatters allocate on streams of their own: 0.4 MiB of fsdp_checkpointing's quick step with every
  block recomputed, on an H100; bench.plan_meta.current_stream says where its streams are not CUDA's);
- it is split when what remains is at least 512 B (small pool) or more than 1 MiB (large pool); otherwise the whole
  block is handed out and counted: a 1.5 MiB tensor given a freed 2 MiB block counts 2 MiB;
- a freed block merges with the free blocks beside it in its segment, and segments are kept (no empty_cache, and
  no memory pressure: a GPU near full returns cached segments to the driver and retries, which this does not).

Written by hand: no library models the allocator. It was checked against an H100's measured peaks (torch 2.11): the
full-size checkpointing steps of the full, sqrt and selective variants to the byte, transformers' Llama at quick size
to the byte, where the tensors' bytes alone were 2-8 KiB under (README, "Planning a GPU run"). What it cannot see:
memory a library allocates through the allocator for itself. cuBLAS's workspace, one per thread and stream that runs
a matmul (the main thread's and autograd's), is made at the first one, in a warm-up, so no step's window holds it; on
Hopper it is 32 MiB, a segment of its own that leaves the others as they are, but the case's peak and reserved bytes
are that much under. Elsewhere it is 8.125 MiB, carved from a 20 MiB segment, whose rest shifts later best fits: the
byte-exact figures are Hopper's. Kernels' own scratch is fed to it where bench.plan_scratch models it (the reduce
kernel's staging, mse_loss's second buffer, the grouped GEMM's arguments and workspace, FlashAttention's split-KV
accumulators); the rest (CUB's temporary storage for sort and nonzero, cuDNN's workspaces, FlashAttention's backward
accumulators) is not seen, and the plan's fixed headroom stands for it.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections import defaultdict

MIN_BLOCK = 512  # kMinBlockSize: every request is rounded up to a multiple of this
SMALL = 1 << 20  # kSmallSize: the largest request the small pool serves
SMALL_SEGMENT = 2 << 20  # kSmallBuffer
LARGE_SEGMENT = 20 << 20  # kLargeBuffer: the segment of a large request under MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge: a request of MIN_LARGE_ALLOC or more gets its own segment, rounded to this


CONFIG_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING",
              "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_NO_HIP_MEMORY_CACHING")


def default_config(env=os.environ) -> bool:
    """Whether the allocator runs with the configuration modelled here: none of CONFIG_ENV set (expandable segments,
    a max split size, power-of-two rounding or no caching at all change its blocks and segments). Settings a program
    makes itself (torch.cuda.memory._set_allocator_settings) are not seen: no suite makes any."""
    return not any(env.get(name) for name in CONFIG_ENV)


class Block:
    __slots__ = ("address", "size", "small", "pool", "prev", "next", "free")

    def __init__(self, address: int, size: int, small: bool, stream=None):
        self.address, self.size, self.small = address, size, small
        self.pool = (stream, small)  # a stream's blocks serve that stream only
        self.prev: Block | None = None
        self.next: Block | None = None
        self.free = True


class CachingAllocatorModel:
    """The allocated and reserved bytes of torch's CUDA caching allocator over a sequence of `malloc(nbytes)` and
    `free(block)`, with their peaks since creation or `reset_peak`."""

    def __init__(self, stream=None):
        """`stream`: () -> the current stream's key, where a program allocates on more than one (FSDP2's all-gather
        and reduce-scatter streams); None for one stream."""
        self.allocated = self.reserved = 0
        self.peak_allocated = self.peak_reserved = 0
        self._stream = stream
        self._pools: dict[tuple, list[tuple[int, int, Block]]] = defaultdict(list)  # free blocks by (size, address)
        self._addresses = itertools.count(step=1 << 40)  # a segment per slot; their order only breaks size ties

    def malloc(self, nbytes: int) -> Block:
        size = MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK
        small = size <= SMALL
        stream = None if self._stream is None else self._stream()
        pool = self._pools[stream, small]
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            block = pool.pop(i)[2]
        else:
            block = Block(next(self._addresses), self._segment_size(size, small), small, stream)
            self.reserved += block.size
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL:
            rest = Block(block.address + size, remaining, small, stream)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            self._insert(rest)
        block.free = False
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block

    def free(self, block: Block) -> None:
        self.allocated -= block.size
        block.free = True
        if block.next is not None and block.next.free:  # merge with the free neighbours
            self._absorb(block, self._remove(block.next))
        if block.prev is not None and block.prev.free:
            block = self._absorb(self._remove(block.prev), block)
        self._insert(block)

    def reset_peak(self) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    @staticmethod
    def _segment_size(size: int, small: bool) -> int:
        if small:
            return SMALL_SEGMENT
        if size < MIN_LARGE_ALLOC:
            return LARGE_SEGMENT
        return -(-size // ROUND_LARGE) * ROUND_LARGE

    @staticmethod
    def _absorb(block: Block, after: Block) -> Block:
        """`block` grown over `after`, the block that follows it in their segment."""
        block.size += after.size
        block.next = after.next
        if after.next is not None:
            after.next.prev = block
        return block

    # a pool's entries are (size, address, block): no two share an address, so tuples order them without a key
    def _insert(self, block: Block) -> None:
        bisect.insort(self._pools[block.pool], (block.size, block.address, block))

    def _remove(self, block: Block) -> Block:
        pool = self._pools[block.pool]
        i = bisect.bisect_left(pool, (block.size, block.address))
        assert pool[i][2] is block, "the free pools lost a block"
        del pool[i]
        return block
