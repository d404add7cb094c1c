"""bench.plan_alloc: the model of torch's CUDA caching allocator that turns a plan's tensors into the bytes CUDA
reports, and the tracker that feeds it. The rules are checked one by one here; a CUDA test replays a random sequence
on the real allocator, in a fresh process, and compares every figure."""


import torch

from bench.memory import TensorMemoryTracker, built_on_host
from bench.plan import StepCounter, run_step
from bench.plan_alloc import CONFIG_ENV, CachingAllocatorModel, default_config
from bench.suite import build_module, discover
from tests.optional import fresh_cuda_process, needs_cuda

MiB = 1 << 20


def test_requests_round_to_512_bytes_in_2_mib_segments():
    a = CachingAllocatorModel()
    blocks = [a.malloc(n) for n in (1, 512, 513, 1000)]
    assert [b.size for b in blocks] == [512, 512, 1024, 1024]
    assert (a.allocated, a.reserved) == (3072, 2 * MiB)  # one small segment serves them all


def test_large_requests_take_20_mib_segments_and_split_them():
    a = CachingAllocatorModel()
    first = a.malloc(3 * MiB)
    second = a.malloc(3 * MiB)
    assert (first.size, second.size, a.reserved) == (3 * MiB, 3 * MiB, 20 * MiB)
    a.malloc(11 * MiB + 1)  # fits the 14 MiB left: split from it
    assert a.reserved == 20 * MiB
    b = CachingAllocatorModel()
    own = b.malloc(11 * MiB + 1)  # a new segment for 10 MiB or more is its own, rounded up to 2 MiB, and with
    assert (own.size, b.reserved) == (12 * MiB, 12 * MiB)  # under 1 MiB over, not split: the tensor counts 12 MiB


def test_a_block_within_1_mib_of_the_request_is_handed_out_whole():
    # the large pool splits only when more than 1 MiB would remain: a 1.5 MiB tensor in a freed 2 MiB block counts
    # 2 MiB, which is what max_memory_allocated reports and what the tensors' bytes alone miss
    a = CachingAllocatorModel()
    freed, kept = a.malloc(2 * MiB), a.malloc(2 * MiB)
    a.free(freed)
    reused = a.malloc(3 * MiB // 2)
    assert reused.address == freed.address and reused.size == 2 * MiB
    assert a.allocated == 4 * MiB and a.reserved == 20 * MiB
    a.free(kept)
    a.free(reused)
    assert a.allocated == 0 and a.peak_allocated == 4 * MiB


def test_freed_neighbours_merge_and_the_smallest_fitting_block_is_taken():
    a = CachingAllocatorModel()
    x, y, z = (a.malloc(4 * MiB) for _ in range(3))
    a.free(x)
    a.free(y)  # merges with x: one free 8 MiB block, beside the 8 MiB left at the segment's end once z is freed
    big = a.malloc(7 * MiB)
    assert big.address == x.address  # 8 MiB free there, and 8 MiB after z: the lowest address breaks the tie
    a.free(z)
    a.free(big)
    whole = a.malloc(20 * MiB - 512)  # everything merged back into the one segment
    assert a.reserved == 20 * MiB and whole.size == 20 * MiB  # 512 B would remain: not split
    a.reset_peak()
    assert a.peak_allocated == a.allocated == 20 * MiB


def test_the_tracker_feeds_the_model_and_an_in_place_twin_takes_its_temporarys_block():
    # backward sums two gradients of one tensor; on meta (subclass-like) out of place, on a GPU in place: the twin
    # must take its temporary's block, or the model's bytes fall 128 KiB under the tracker's while it lives. Blocks
    # are the tensors here but for the scalars (the loss and its gradient, 4 B in a 512 B block)
    gaps, twins = [], []

    class Checked(TensorMemoryTracker):
        def track(self, storage, replaces=None):
            super().track(storage, replaces)
            twins.append(self._pending is not None)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self._settle()
            gaps.append(self.live_bytes("meta") - self.allocator.allocated)
            return super().__torch_dispatch__(func, types, args, kwargs)

    x = torch.empty(128, 256, device="meta", requires_grad=True)  # 128 KiB
    model = CachingAllocatorModel()
    with Checked(model) as tracker:
        y = x * 2
        (y * 3 + y.exp()).sum().backward()
        live, peak = tracker.live_bytes("meta"), tracker.peak_bytes("meta")
    assert any(twins) and all(-1024 <= gap <= 0 for gap in gaps), sorted(set(gaps))
    assert model.allocated == live == 2 * 128 * 256 * 4  # y and x.grad
    assert model.peak_allocated == peak


def test_a_twin_freed_before_the_next_op_leaves_no_block():
    # the twin's output dropped at once while its temporary is still held: a genuine out-of-place op, whose block
    # the model must free again (it had leaked: 4 KiB allocated with nothing live)
    model = CachingAllocatorModel()
    tracker = TensorMemoryTracker(model)
    temp, twin = (torch.empty(1024, device="meta") for _ in range(2))
    tracker.track(temp.untyped_storage())
    tracker.track(twin.untyped_storage(), replaces=temp.untyped_storage())
    del twin
    tracker.settle()
    del temp
    tracker.settle()
    assert tracker.live_bytes("meta") == model.allocated == 0 and model.peak_allocated == 8192


def test_a_twin_and_its_temporary_both_freed_before_the_next_op_free_one_block():
    # the in-place op's result dropped at once: the temporary's block, handed to the twin, is freed once, on leaving
    model = CachingAllocatorModel()
    temp, twin = (torch.empty(1024, device="meta") for _ in range(2))
    with TensorMemoryTracker(model) as tracker:
        tracker.track(temp.untyped_storage())
        tracker.track(twin.untyped_storage(), replaces=temp.untyped_storage())
        del twin, temp
        assert model.allocated == 4096  # held back until the next op, or the mode's exit
    assert tracker.live_bytes("meta") == model.allocated == 0 and model.peak_allocated == 4096


def test_a_twins_block_comes_before_the_frees_after_its_op():
    # the engine drops the other addend as the sum returns, before the next op: the sum's block was taken at the op,
    # so the model holds three blocks at once, as the tracker counts (it had reused the addend's: two)
    model = CachingAllocatorModel()
    tracker = TensorMemoryTracker(model)
    temp, other, twin = (torch.empty(1024, device="meta") for _ in range(3))
    tracker.track(temp.untyped_storage())
    tracker.track(other.untyped_storage())
    tracker.track(twin.untyped_storage(), replaces=temp.untyped_storage())
    del other
    tracker.settle()  # temp still held: not in place after all
    assert model.peak_allocated == tracker.peak_bytes("meta") == 3 * 4096
    assert model.allocated == tracker.live_bytes("meta") == 2 * 4096


def test_only_the_default_allocator_configuration_is_modelled():
    assert default_config({}) and default_config({"PYTORCH_CUDA_ALLOC_CONF": ""})
    assert not any(default_config({name: "expandable_segments:True"}) for name in CONFIG_ENV)


def test_a_module_built_on_the_host_counts_only_its_copy_to_a_gpu():
    layer = lambda: torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.LayerNorm(512))  # noqa: E731
    params = (512 * 512 + 512 + 2 * 512) * 2  # bf16
    with TensorMemoryTracker(host_builds=False) as gpu, TensorMemoryTracker() as cpu:
        module = build_module(layer, "meta", torch.bfloat16)
    assert gpu.live_bytes("meta") == gpu.peak_bytes("meta") == params  # no float32 weights, each tensor once
    assert cpu.live_bytes("meta") == params and cpu.peak_bytes("meta") > 2 * params  # built in float32, then cast
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_built_on_host_copies_children_before_their_parent():
    order = []

    class Log(TensorMemoryTracker):
        def track(self, storage, replaces=None):
            order.append(storage.nbytes())
            super().track(storage, replaces)

    def build():
        parent = torch.nn.Module()
        parent.register_buffer("own", torch.empty(3, device="meta"))
        parent.child = torch.nn.Linear(2, 5, device="meta")
        return parent

    with Log(host_builds=False):
        built_on_host(build)
    assert order == [40, 20, 12]  # child's weight and bias (Module._apply's order), then the parent's buffer


REPLAY = r"""
import random, sys, torch
sys.path.insert(0, sys.argv[1])
from bench.plan_alloc import CachingAllocatorModel
torch.cuda.init()
streams = [torch.cuda.current_stream(), torch.cuda.Stream(), torch.cuda.Stream()]
model = CachingAllocatorModel(lambda: torch.cuda.current_stream().cuda_stream)
rng, live = random.Random(0), []
base_a, base_r = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
for i in range(600):
    if rng.random() < 0.1:  # blocks are kept per stream: allocate on another from here on
        torch.cuda.set_stream(rng.choice(streams))
    if live and rng.random() < 0.45:
        t, b = live.pop(rng.randrange(len(live)))
        del t
        model.free(b)
    else:
        n = rng.choice([rng.randint(1, 4096), rng.randint(4096, 1 << 20), rng.randint(1 << 20, 12 << 20),
                        rng.randint(12 << 20, 40 << 20)])
        live.append((torch.empty(n, dtype=torch.uint8, device="cuda"), model.malloc(n)))
    got = (torch.cuda.memory_allocated() - base_a, torch.cuda.memory_reserved() - base_r)
    if got != (model.allocated, model.reserved):
        sys.exit(f"step {i}: CUDA allocated, reserved {got} != the model's {(model.allocated, model.reserved)}")
print("ok", model.peak_allocated, model.peak_reserved)
"""


@needs_cuda
def test_the_model_matches_the_cuda_caching_allocator():
    done = fresh_cuda_process(REPLAY)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:] or done.stdout


def test_each_stream_has_blocks_of_its_own():
    # FSDP2 all-gathers and reduce-scatters on streams of their own: a block freed on one stream is not handed to
    # another, which takes a segment of its own; the first stream gets its block back
    stream = ["default"]
    a = CachingAllocatorModel(lambda: stream[0])
    a.free(a.malloc(3 * MiB))
    stream[0] = "all-gather"
    a.malloc(3 * MiB)
    assert (a.allocated, a.reserved) == (3 * MiB, 40 * MiB)
    stream[0] = "default"
    a.malloc(3 * MiB)
    assert (a.allocated, a.reserved) == (6 * MiB, 40 * MiB)
    # what a split leaves of a stream's segment stays that stream's: two small blocks share one 2 MiB segment there,
    # and another stream's first small block takes a segment of its own
    stream[0] = "reduce-scatter"
    a.malloc(1000)
    a.malloc(1000)
    assert a.reserved == 42 * MiB
    stream[0] = "default"
    a.malloc(1000)
    assert a.reserved == 44 * MiB
    one = CachingAllocatorModel()  # no stream given: one pool, as before
    one.free(one.malloc(3 * MiB))
    one.malloc(3 * MiB)
    assert one.reserved == 20 * MiB


def test_an_empty_tensor_takes_no_block():
    model = CachingAllocatorModel()
    with TensorMemoryTracker(model):
        torch.empty(0, device="meta")
    assert model.allocated == model.reserved == 0


def test_a_plans_peak_counts_the_build_and_its_window_opens_after_clear():
    # mla's decode workload prefills its cache in the build, on the GPU as on meta: that is the case's peak, above the
    # decode step's (the plan had counted the step alone, and said such a case fits a GPU its prefill does not)
    mla = discover()["mla"]
    params = next(p for p in mla.grid("smoke", "cuda") if p["part"] == "decode")
    for target in ("cpu", "cuda"):
        raw = run_step(mla, "mha", params, target)
        assert raw["peak_bytes"] > raw["resident_bytes"] + raw["step_peak_bytes"], target
    # the previous step's gradients are cleared before the window, as peak_bytes() does for a run: the step's own
    # gradients are in its peak, where a model of the allocator inside the window would net the old ones out
    checkpointing = discover()["checkpointing"]
    params = checkpointing.grid("smoke", "cuda")[0]
    cleared, netted = (run_step(checkpointing, "none", params, "cuda", warm_up=True, clear=clear)
                       for clear in (True, False))
    assert cleared["step_peak_bytes"] - netted["step_peak_bytes"] >= cleared["grad_bytes"] > 0
    # what is resident besides parameters and the warm-up's gradients is the batch, [2, 64, 64] twice
    assert cleared["other_bytes"] == 2 * 2 * 64 * 64 * 2


def test_the_flop_counters_stand_in_tensors_are_no_steps_memory():
    # the GQA formula counts keys and values broadcast to the query's heads with stand-in tensors, 16 MiB here; the
    # tracker (and the allocator model behind it) must not see them (mla's GQA decode read +766% on the H100 run)
    q = torch.empty(1, 8, 1, 64, device="meta", dtype=torch.bfloat16)
    kv = torch.empty(1, 2, 4096, 64, device="meta", dtype=torch.bfloat16)
    with TensorMemoryTracker() as tracker, StepCounter() as counted:
        torch.ops.aten._scaled_dot_product_flash_attention(q, kv, kv)
    assert counted.flops == 2 * 2 * 8 * 4096 * 64 and tracker.peak_bytes("meta") < 4096
