"""`bench plan`: a case's step run on the meta device predicts what the live-tensor tracker measures of the same step
on CPU, and the plan says whether a case fits a named GPU.

The 2% check runs each plannable case's workload twice: planned on meta for a CPU target, and for real on CPU under
the tracker (warm-up, then the tracked step, as `measure` does). Sizes per suite: smoke everywhere, quick where a real
CPU step takes under a few seconds on a busy 2-core machine (QUICK below says which, and why not the others).
"""

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch

import bench.plan
from bench import hardware, plan_meta
from bench.cli import main
from bench.distributed import one_rank_group
from bench.flops import flop_counter_mode
from bench.memory import TensorMemoryTracker, peak_bytes
from bench.memory_ops import cpu_scratch
from bench.plan import HEADROOM_BYTES, StepCounter, headroom, plan, plan_case, predict_peak, run_step
from bench.plan_meta import IndexValues, MetaKernels
from bench.suite import SUITES, NotPlannable, Skip, discover
from tests.allocator import SCRATCH, unobserved_peak
from tests.optional import forks_beside_threads, missing

ROOT = Path(__file__).resolve().parents[2]

TOLERANCE = 0.02  # the bound; the worst error is printed per suite
# The cases the 2% check covers by default: a few per suite, so that the file stays well under a minute on a busy
# 2-core machine, where a real CPU step takes 0.2-20 s (rmpad's segments backend over lognormal lengths: ~20 s).
# TECHBENCH_PLAN_ALL=1 checks every plannable smoke and quick case instead (minutes).
DEFAULT = {
    "checkpointing": {"smoke": {"model": None}},
    "rmpad": {"smoke": {"dist": "uniform"}},
    "packing": {"smoke": {"dist": "lognormal"}},
    "fp8": {"smoke": {}, "quick": {}},
    "mla": {"smoke": {}, "quick": {"context": 256}},
    "mtp": {"smoke": {}},
    "moe": {"smoke": {}},
}  # fsdp_checkpointing: tests/suites/test_fsdp_checkpointing.py, against its smoke run's records (one rank, two)
EVERYTHING = os.environ.get("TECHBENCH_PLAN_ALL") == "1"


@pytest.fixture(scope="module")
def registry():
    return discover()


@contextmanager
def one_thread():
    # tiny CPU ops: a second intra-op thread costs more than it gives on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def real_peak(suite, variant, params) -> int:
    """What `measure` records as peak_mem_bytes on CPU: the tracker's peak over a step after the warm-up and the
    workload's `clear`. It has to be what the CUDA allocator counts too: the most live during the step less what was
    live before it, which nets out what the step frees of older tensors (the tracker cannot see those frees). An outer
    tracker that saw the workload built counts it that way, and the two must agree: a step that frees the previous
    one's gradients inside the window would read its peak without them on CUDA."""
    torch.manual_seed(0)
    with one_thread(), TensorMemoryTracker(scratch=cpu_scratch) as everything:  # as peak_bytes counts the CPU
        w = suite.workload(variant, params, "cpu")
        w.step()
        if w.clear is not None:
            w.clear()
        before = everything.live_bytes("cpu")
        everything.reset_peak()
        step_peak = peak_bytes(w.step, "cpu")
        allocator_peak = everything.peak_bytes("cpu") - before
    assert step_peak == allocator_peak, f"the step frees {step_peak - allocator_peak} B of older tensors"
    # and what the step allocates run without the tracker (a dispatch mode, which changes what backward runs): less
    # only by what no op returns, scratch inside kernels that bench.memory_ops.cpu_scratch does not model (it models
    # torch._scaled_mm's emulation, 0.7-0.8 MB in torchao's steps on a CPU without AMX) and checkpoint's saved CPU
    # RNG states (5 KB a region: 1.3% of the smoke selective step)
    if w.clear is not None:
        w.clear()
    with one_thread():
        unobserved = unobserved_peak(w.step)
    assert -SCRATCH <= unobserved - step_peak <= max(SCRATCH, 0.02 * unobserved), \
        f"{step_peak} B counted, {unobserved} B allocated unobserved"
    return step_peak + (w.held() if w.held else 0)


def selected(name):
    suite = SUITES[name]
    for size, where in DEFAULT[name].items() if not EVERYTHING else (("smoke", {}), ("quick", {})):
        for params in suite.grid(size, "cpu"):
            if all(params.get(k) == v for k, v in where.items()):
                yield from (plan_case(suite, v, params, "cpu") for v in suite.variants if suite.has_case(v, params))


def plan_errors(name: str) -> dict[str, float]:
    """The relative error of each selected plannable case of suite `name` against its real CPU peak."""
    suite, errors = SUITES[name], {}
    for p in selected(name):
        if p.status != "ok":
            assert p.status in ("not_plannable", "skipped") and p.reason, p.case_id  # never a silent gap
            continue
        real = real_peak(suite, p.variant, p.params)
        errors[p.case_id] = abs(p.step_peak_bytes - real) / real
    return errors


@pytest.mark.parametrize("name", sorted(DEFAULT))
def test_prediction_matches_the_cpu_tracker_within_2_percent(registry, name):
    errors = plan_errors(name)
    worst = max(errors, key=errors.get)
    print(f"\n{name}: {len(errors)} cases planned, worst error {100 * errors[worst]:.4f}% ({worst})")
    assert errors[worst] <= TOLERANCE, (worst, errors[worst])


def test_a_case_is_exact_and_its_parts_add_up(registry):
    suite = registry["checkpointing"]
    params = suite.grid("smoke", "cpu")[0]
    p = plan_case(suite, "none", params, "cpu")
    assert p.step_peak_bytes == real_peak(suite, "none", params) == predict_peak(suite, "none", params, "cpu")
    n = sum(t.numel() for t in suite.workload("none", params, "meta").modules[0].parameters())
    assert p.parts["parameters"] == p.parts["gradients"] == 4 * n  # fp32 on the CPU
    assert p.parts["optimizer"] == 0 and p.parts["activations"] > 0
    batch = 4 * params["batch"] * params["seq"] * params["d_model"]
    assert p.parts["inputs"] == 2 * batch  # x and its target; not the warm-up's gradients, which the step frees
    assert p.peak_bytes >= p.step_peak_bytes + p.parts["parameters"]  # the step's bytes on top of what was resident
    assert p.flops > 0 and p.bytes_moved > 0 and p.roofline_ms is None  # no GPU named: no roofline


@pytest.mark.parametrize("suite, variant, part", [("mla", "mha", "decode"), ("mla", "mla_naive", "decode"),
                                                  ("mla", "mla_absorbed", "decode"), ("checkpointing", "full", None)])
def test_flops_equal_torchs_counter_on_the_real_step(registry, suite, variant, part):
    # mla's decode runs under inference_mode, where linear and SDPA reach a dispatch mode whole: they must still count
    params = next(p for p in registry[suite].grid("smoke", "cpu") if p.get("part") == part and "model" not in p)
    predicted = plan_case(registry[suite], variant, params, "cpu")
    step = registry[suite].workload(variant, dict(params), "cpu").step
    step()
    with flop_counter_mode() as real:
        step()
    assert predicted.status == "ok" and predicted.flops == real.get_total_flops() > 0


def test_moe_dispatch_plans_the_same_flops_and_peak_for_every_gemm_backend(registry):
    # torch._grouped_mm has a formula of bench.flops', and the Triton kernels, which no op shows to the counter,
    # are declared by the workload (Workload.uncounted_flops and _bytes): with zero FLOPs, a roofline would be
    # memory-bound alone. The Triton dispatch's module imports triton, though the plan launches no kernel: without
    # it, that variant says so.
    suite, triton = registry["moe"], not missing("triton")
    for params in (p for p in suite.grid("smoke", "cuda:0") if p["part"] == "dispatch"):
        plans = {v: plan_case(suite, v, params, "cuda", "h100") for v in ("loop", "grouped_torch", "grouped_mm",
                                                                           "grouped_triton")}
        if not triton:
            assert "needs triton" in plans.pop("grouped_triton").reason
        assert all(p.status == "ok" for p in plans.values()), {v: p.reason for v, p in plans.items()}
        flops = 3 * 2 * params["tokens"] * params["top_k"] * 3 * params["dim"] * params["hidden"]
        assert {p.flops for p in plans.values()} == {flops}
        if triton:  # the grouped backends sort the same rows into the same buffers, on one kernel or several
            assert plans["grouped_triton"].peak_bytes == plans["grouped_mm"].peak_bytes > 0
            # the Triton GEMMs' declared traffic is what the counter counts of torch._grouped_mm's, plus the
            # Triton path's row tiles (16-28 KiB here)
            mm, kernels = plans["grouped_mm"].bytes_moved, plans["grouped_triton"].bytes_moved
            assert mm < kernels <= 1.02 * mm


def test_full_checkpointing_on_h200_and_l4(registry):
    suite = registry["checkpointing"]
    params = [p for p in suite.grid("full", "cuda:0") if "model" not in p][-1]  # 1.2B parameters, 16 x 4096, bf16
    on_h200 = plan_case(suite, "none", params, "cuda", "h200")
    n = sum(t.numel() for t in suite.workload("none", params, "meta").modules[0].parameters())
    assert on_h200.dtype == "bfloat16" and on_h200.parts["parameters"] == 2 * n > 2.4e9  # 1.2B in bf16
    assert on_h200.fits is True and on_h200.capacity_bytes == hardware.memory_bytes("NVIDIA H200")
    assert on_h200.headroom_bytes == headroom(on_h200.peak_bytes) > HEADROOM_BYTES
    # the roofline: compute-bound at this size, FLOPs over the bf16 peak
    assert on_h200.roofline_ms == pytest.approx(on_h200.flops / 989.4e12 * 1e3)
    assert plan_case(suite, "none", params, "cuda", "l4").fits is False  # 24 GB
    # transformers' Llama of the same size keeps more: 142 GiB, past the H200's 140.4 GiB before any headroom
    hf = plan_case(suite, "none", {**params, "model": "hf_llama"}, "cuda", "h200")
    assert (hf.fits is False and hf.peak_bytes > hf.capacity_bytes) or (missing("transformers") and
                                                                         hf.status == "skipped")


def test_not_plannable_cases_say_why(registry):
    mla = registry["mla"]
    p = plan_case(mla, "mha", next(q for q in mla.grid("smoke", "cpu") if q["part"] == "cache"), "cpu")
    assert p.status == "not_plannable" and "counts bytes per token on the meta device already" in p.reason
    fsdp = registry["fsdp_checkpointing"]
    with one_rank_group("cpu"):  # as inside a torchrun rank: the plan's fake group cannot be made there
        p = plan_case(fsdp, "none", fsdp.grid("smoke", "cpu")[0], "cpu")
    assert p.status == "not_plannable" and "inside a running one" in p.reason
    p = plan_case(fsdp, "none", {**fsdp.grid("smoke", "cpu")[0], "world_size": 3}, "cpu")
    assert p.status == "skipped" and "world sizes 1, 2, 4, 8, not 3" in p.reason
    samplers = registry["samplers"]
    p = plan_case(samplers, next(iter(samplers.variants)), samplers.grid("smoke", "cpu")[0], "cpu")
    assert p.status == "not_plannable" and p.reason == samplers.not_plannable and "no memory figure" in p.reason
    for name in ("detection", "moe_ep"):  # every suite without a workload says what a plan of it would need
        suite = registry[name]
        params = {**suite.grid("smoke", "cpu")[0], **({"world_size": 1} if suite.world_sizes else {})}
        p = plan_case(suite, next(iter(suite.variants)), params, "cpu")
        assert p.status == "not_plannable" and p.reason == suite.not_plannable, p.reason

    class Bare(type(samplers)):
        not_plannable = None

    p = plan_case(Bare(), next(iter(samplers.variants)), samplers.grid("smoke", "cpu")[0], "cpu")
    assert p.status == "not_plannable" and "does not build its step through Suite.workload" in p.reason


@pytest.mark.parametrize("built, reason", [
    (lambda: 1 // 0, "its workload() raised: ZeroDivisionError: integer division or modulo by zero"),
    (lambda: print, "Built.workload() returned builtin_function_or_method, not a bench.suite.Workload: "
                    "return Workload(step, ...)"),
])
def test_a_workload_that_fails_to_build_is_told_from_a_step_that_fails_on_meta(registry, built, reason):
    samplers = registry["samplers"]

    class Built(type(samplers)):
        def workload(self, variant, params, device, target=None):
            return built()  # the suite's own bug, which `bench run` meets too: no fault of the meta device

    p = plan_case(Built(), next(iter(samplers.variants)), samplers.grid("smoke", "cpu")[0], "cpu")
    assert p.status == "not_plannable" and p.reason == reason


def test_index_tensors_keep_their_values_on_meta():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    x = torch.empty(2, 3, 8, device="meta")
    with IndexValues():
        m = mask.to("meta")
        picked = x[m.bool()]  # a boolean index: nonzero on the values
        assert picked.shape == (3, 8) and picked.device.type == "meta"
        assert m.sum().item() == 3 and m[0].tolist() == [1, 1, 0]
        assert torch.nonzero(m.flatten()).shape == (3, 1)
        with pytest.raises(NotPlannable, match="item"):
            x.sum().item()  # a float tensor on meta has no values: never a guess


def test_index_values_are_computed_when_read_and_before_a_mutation():
    with IndexValues() as iv:
        causal = torch.ones(4096, 4096, dtype=torch.bool, device="meta").tril()  # shaped, never read: never made
        assert causal.shape == (4096, 4096)
        assert isinstance(iv.values[causal], plan_meta._Later) and iv.values[causal].thunk is not None
        small = torch.ones(3, 3, dtype=torch.bool, device="meta").tril()
        assert small.sum().item() == 6  # read: made then
        assert torch.equal(iv._get(small), torch.ones(3, 3, dtype=torch.bool).tril())
        a = torch.arange(4, device="meta")
        doubled = a * 2  # waits
        a.add_(1)  # a mutation: what waits is made first, from the values before it
        assert doubled.tolist() == [0, 2, 4, 6] and a.tolist() == [1, 2, 3, 4]
        assert iv.values[causal].thunk is None  # a mutation makes every value still waiting, whatever it read


def test_a_meta_op_answered_from_its_signature_is_what_its_kernel_gives(monkeypatch):
    monkeypatch.setattr(plan_meta, "SIGNATURES", {})
    x, w = torch.empty(6, 4, device="meta").t(), torch.empty(6, 5, device="meta")  # a transposed input
    kernel = torch.mm(x, w)
    with MetaKernels():
        first, again = torch.mm(x, w), torch.mm(x, w)  # the kernel's, then one from the signature
        # _unsafe_view's output shares its input's storage though its schema does not say so: never answered
        views = [torch.ops.aten._unsafe_view(again, (20,)) for _ in range(2)]
        long = torch.mm(x, w).to(torch.float64)  # another dtype: another signature
    layout = (kernel.shape, kernel.stride(), kernel.dtype)
    assert [(t.shape, t.stride(), t.dtype) for t in (first, again)] == [layout] * 2
    assert len({t.untyped_storage()._cdata for t in (x, w, first, again)}) == 4  # fresh storages, of the same bytes
    assert again.untyped_storage().nbytes() == kernel.untyped_storage().nbytes()
    assert all(v.untyped_storage()._cdata == again.untyped_storage()._cdata for v in views)
    assert long.dtype == torch.float64 and long.untyped_storage().nbytes() == 8 * 20
    kept = {key[0]: value for key, value in plan_meta.SIGNATURES.items()}
    assert kept[torch.ops.aten.mm.default] == (True, [((4, 5), (5, 1), torch.float32)])
    assert kept[torch.ops.aten._unsafe_view.default] is plan_meta._UNCACHEABLE


def test_a_factory_op_given_no_dtype_is_answered_in_the_default_dtype_in_force(monkeypatch):
    # nn.Linear makes its weight with torch.empty(shape) and no dtype: the kernel takes torch's default dtype, which a
    # layer built under another default (transformers' in mla, under bf16) must get, whatever was answered before
    monkeypatch.setattr(plan_meta, "SIGNATURES", {})
    before = torch.get_default_dtype()
    with MetaKernels():
        first = torch.nn.Linear(128, 512, bias=False, device="meta").weight
        torch.set_default_dtype(torch.bfloat16)
        try:
            second = torch.nn.Linear(128, 512, bias=False, device="meta").weight
        finally:
            torch.set_default_dtype(before)
    assert (first.dtype, second.dtype) == (torch.float32, torch.bfloat16)
    assert second.untyped_storage().nbytes() == 2 * 512 * 128


@pytest.mark.parametrize("name", ["checkpointing", "moe"])
def test_a_plan_is_the_same_without_answering_ops_from_their_signatures(registry, monkeypatch, name):
    suite = registry[name]
    point = next(p for p in suite.grid("smoke", "cuda:0") if p.get("part") in (None, "dispatch") and "model" not in p)
    cases = [(v, point) for v in suite.variants if suite.has_case(v, point)]

    def steps():
        out = []
        for variant, params in cases:
            try:
                out.append(run_step(suite, variant, params, "cuda"))
            except (NotPlannable, Skip) as e:
                out.append(type(e).__name__)
        return out

    monkeypatch.setattr(plan_meta, "SIGNATURES", {})
    answered = steps()
    assert sum(isinstance(r, dict) for r in answered) >= 3 and len(plan_meta.SIGNATURES) > 10
    monkeypatch.setattr(bench.plan, "MetaKernels", nullcontext)
    assert steps() == answered


def test_hardware_memory_and_names():
    assert hardware.memory_bytes("NVIDIA H200") == 143771 * 2 ** 20 and hardware.memory_bytes("AMD") is None
    assert hardware.resolve("H100") == "h100 80gb hbm3" and hardware.resolve("l4") == "l4"
    assert hardware.resolve("nosuch") is None


@forks_beside_threads
def test_planning_in_forked_processes_gives_the_same_plan_in_the_same_order(registry, capsys):
    suites = [registry["mla"], registry["moe"]]
    one = plan(suites, "smoke", "cuda", "h200", jobs=1)
    told = []
    two = plan(suites, "smoke", "cuda", "h200", jobs=2, progress=lambda planned, total: told.append((planned, total)))
    assert len(one) > 10 and {p.status for p in one} >= {"ok", "not_plannable"}
    assert [p.to_json() for p in two] == [p.to_json() for p in one]
    assert told[-1] == (len(one), len(one)) and [n for n, _ in told] == sorted({n for n, _ in told})
    assert main(["plan", "mla", "--size", "smoke", "--gpu", "h200", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert main(["plan", "fsdp_checkpointing", "--size", "smoke", "--gpu", "h200", "--world-size", "0"]) == 2
    assert "--world-size must be at least 1, got 0" in capsys.readouterr().err


def test_a_plan_forks_no_process_where_torch_sees_a_gpu(registry, monkeypatch):
    # is_available() asks the device count, after which a forked child cannot initialise CUDA (and a plan asks the
    # GPU its SDPA choice): the whole plan is made in this process there
    def pool(*args, **kwargs):
        raise AssertionError("a plan forked workers on a machine with a GPU")

    monkeypatch.setattr(bench.plan, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    planned = plan([registry["moe"]], "smoke", "cpu", jobs=2)
    assert len(planned) > 4 and {p.status for p in planned} >= {"ok"}


@forks_beside_threads
def test_points_a_forked_child_could_not_run_backward_for_are_planned_again_here(registry, monkeypatch):
    """A child forked from a process whose autograd threads had started fails every backward (torch's Autograd-and-Fork
    error): what it reports is not a plan, and those points are planned in this process instead."""
    parent, real = os.getpid(), bench.plan.plan_case

    def plan_case(suite, variant, params, *how):
        if os.getpid() != parent and params.get("experts") == 8:  # one point's cases, in the children
            return bench.plan.Prediction(suite.name, variant, dict(params), "not_plannable", reason="its step does "
                                         "not run on the meta device: RuntimeError: ... See https://github.com/"
                                         "pytorch/pytorch/wiki/Autograd-and-Fork", target=how[0])
        return real(suite, variant, params, *how)

    monkeypatch.setattr(bench.plan, "plan_case", plan_case)
    suites = [registry["moe"]]
    one, two = plan(suites, "smoke", "cuda", "h200", jobs=1), plan(suites, "smoke", "cuda", "h200", jobs=2)
    assert any(p.params.get("experts") == 8 and p.status == "ok" for p in one)
    assert [p.to_json() for p in two] == [p.to_json() for p in one]


def test_the_counter_runs_an_op_with_a_kernel_of_its_own_whole():
    # silu_backward has a decomposition too, but every device runs its kernel: one output, none of the decomposition's
    # sigmoid and products (the peak was 6 MiB when they were counted, against 1 MiB); linear, which has no kernel of
    # its own, is still counted through its decomposition under inference_mode
    x = torch.empty(1024, 256, device="meta", requires_grad=True)  # 1 MiB
    with TensorMemoryTracker() as everything, StepCounter():
        torch.nn.functional.silu(x).sum().backward()
    assert everything.peak_bytes("meta") < 2 * x.nbytes
    w = torch.empty(128, 256, device="meta")
    with torch.inference_mode(), StepCounter() as counted:
        torch.nn.functional.linear(x.detach(), w)
    assert counted.flops == 2 * 1024 * 256 * 128
