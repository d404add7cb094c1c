"""`bench plan`: each case's memory, FLOPs and roofline bound on a named GPU, predicted on the meta device.

A suite's `workload` builds the step its `measure` runs (bench.suite.Workload). The plan builds it with every tensor
on the meta device but in the target's dtype and shapes (the grid for the target), runs the warm-up and one step
under the live-tensor tracker, the FLOP counter and a byte counter (bench.plan_meta keeps index tensors' values,
bench.plan_attention routes attention to the target's kernel, bench.plan_norm RMSNorm to its fused one), and reports:

- step_peak_bytes: the most the step allocates beyond what was live before it (after the workload's `clear`, as
  the suites' peak_mem_bytes count it, the step's gradients included; plus `Workload.held` where a suite's metric
  adds a filled cache): what `predict_peak` returns, and what a run's measured peak_mem_bytes is compared with. The
  tracker counts the out-of-place ops autograd runs on meta as the in-place ones a device runs (bench.memory's
  IN_PLACE_TWINS).
- peak_bytes: the most live at once over the case: its build (mla's prefill), the warm-up, and the step with
  everything live around it (parameters, optimizer state, the batch). It is what has to fit in the GPU.
- For a CUDA target both are the caching allocator's bytes (its blocks, bench.plan_alloc: what max_memory_allocated
  reports), and reserved_bytes its segments over the case; a module from build_module counts as copied to the GPU.
- the parts: parameters, gradients (after the step), optimizer state, activations saved for backward (bytes autograd
  saved, parameters left out, and the unsharded ones FSDP2 all-gathers and frees after each unit's forward; a
  checkpointing variant's own hooks hide what it recomputes), other resident bytes (the batch, buffers; not the
  warm-up's gradients, which the step frees or reuses), all in tensor bytes (a DTensor's: the rank's shard), and
  transient = peak - all of those (temporaries, a build's own where it holds the peak, as mla's prefill does, and on
  a CUDA target the allocator's rounding; never below 0, since gradients and saved activations need not be live at
  once).
- attention: the SDPA kernels the step takes on the target ("math", holding the S x S scores, misses the fused ones).
- flops: those of the ops torch's FLOP counter has a formula for, as the target's kernels are called (bench.plan_count
  says which), over the one step: its forward, backward and any recompute, not the build or the warm-up. Elementwise
  ops, norms, softmax, losses, embeddings and the optimizer's update count none.
- bytes_moved: every op's tensor inputs read and outputs written, views left out (the traffic of an eager, unfused
  step, an upper bound on what fused kernels move), and roofline_ms = max(the FLOPs of each dtype / the GPU's peak
  TFLOP/s for it, summed; bytes_moved / bandwidth) from bench.hardware, each op's FLOPs in the dtype it computes in
  on the target (bench.plan_count); `dtype` is the one most of them run in.
- fits: peak_bytes + headroom <= the GPU's memory, headroom = HEADROOM_BYTES + HEADROOM_FRACTION x peak_bytes.

The headroom: the CUDA context with torch's kernels loaded takes 0.5-0.6 GiB of device memory on an H100 (CUDA 12,
lazy loading), cuBLAS and cuDNN workspaces tens of MiB more, so 1 GiB is fixed; the caching allocator fragments as
sizes change, holding segments beyond its blocks, which costs ~5-10% of the peak in training loops, so 10% of the peak
is added (a CUDA target's peak has the allocator's rounding in it already). A case inside that margin is reported as
fitting, one outside as not. The model's reserved bytes exceed its peak by more at full size (median 17%, up to 66%
for rmpad's padded long-tailed batches), but it models no memory pressure, under which the allocator returns its
free segments and retries before it fails; until a GPU run has measured reserved bytes (`bench run --predict`
records them), the verdict keeps the stated margin.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bench import hardware
from bench.lifeline import freeze_alive
from bench.memory import SavedTensorBytes, TensorMemoryTracker
from bench.memory_ops import cpu_scratch
from bench.plan_alloc import CachingAllocatorModel
from bench.plan_attention import target_attention
from bench.plan_autocast import target_autocast
from bench.plan_count import StepCounter, roofline_ms, storage_bytes
from bench.plan_flex import target_flex
from bench.plan_meta import IndexValues, MetaKernels, current_stream, fake_ranks, local_tensor, unsharded
from bench.plan_norm import target_rms_norm
from bench.plan_offload import target_offload
from bench.plan_optim import target_foreach
from bench.plan_pool import died, one_by_one, stop
from bench.plan_scratch import kernel_scratch
from bench.plan_set import nothing_changed, with_changes
from bench.suite import NotPlannable, Skip, Suite, Workload, case_id

GIB = 1 << 30
HEADROOM_BYTES = GIB  # CUDA context (~0.55 GiB measured on H100, CUDA 12) + library workspaces
HEADROOM_FRACTION = 0.10  # caching-allocator rounding and fragmentation, as a share of the peak
META = "meta"


@dataclass
class Prediction:
    """One case's plan; a JSON record (`to_json`) that reports/plan_page.py draws."""

    suite: str
    variant: str
    params: dict[str, Any]
    status: str
    """"ok", "not_plannable" (the reason says why) or "skipped" (the variant cannot run on the target)."""
    reason: str | None = None
    target: str = "cpu"
    gpu: str | None = None
    step_peak_bytes: int | None = None
    peak_bytes: int | None = None
    reserved_bytes: int | None = None
    """A CUDA target's: the most the caching allocator holds from the driver over the case (bench.plan_alloc)."""
    parts: dict[str, int] = field(default_factory=dict)
    flops: int | None = None
    bytes_moved: int | None = None
    dtype: str | None = None
    """The dtype most of the step's FLOPs run in on the target (bench.plan_count.StepCounter): bf16 for a CUDA grid's
    bf16 model or fp8's reference step, float8_e4m3fn where float8 GEMMs dominate; the case's "dtype" param where no
    FLOPs are counted. Not a params default: fp8's training part has none, and ran bf16 on CUDA."""
    flops_by_dtype: dict[str, int] = field(default_factory=dict)
    """The FLOPs of each dtype: the roofline divides each by the GPU's peak for it (bench.plan_count.roofline_ms)."""
    roofline_ms: float | None = None
    capacity_bytes: int | None = None
    headroom_bytes: int | None = None
    fits: bool | None = None
    attention: list[str] = field(default_factory=list)
    """The attention kernels the step takes on the target: SDPA's (bench.plan_attention) "flash", "efficient",
    "cudnn", or "math", which holds each call's S x S scores; "flex" for compiled FlexAttention (bench.plan_flex),
    "flex, FLOPs uncounted" where its block mask was too large to evaluate. Empty where the step calls neither."""
    host_bytes: int | None = None
    """The most host memory the case's offloaded copies hold at once (bench.plan_offload; pinned on a GPU), where it
    offloads: not in the device's figures, and no fits verdict checks it."""

    @property
    def case_id(self) -> str:
        return case_id(self.suite, self.variant, self.params)

    def to_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, **asdict(self)}


def headroom(peak_bytes: int) -> int:
    """Bytes kept free beyond the predicted peak (see the module's docstring for the figures)."""
    return HEADROOM_BYTES + math.ceil(HEADROOM_FRACTION * peak_bytes)


def run_step(suite: Suite, variant: str, params: dict, target: str, warm_up: bool | None = None,
             clear: bool = True, gpu: str | None = None) -> dict[str, Any]:
    """Build the case's workload on meta for `target` and run its warm-up and one step: the raw figures of a plan.
    `warm_up`: whether to run the warm-up step (default: unless the workload is stateless). `clear`: run the
    workload's `clear` before the step's window, as bench.memory.peak_bytes does. Raises NotPlannable or Skip. On a
    CUDA target the peaks are the caching allocator's (bench.plan_alloc), as CUDA reports them, kernels' scratch
    included where `gpu` (a bench.hardware name; None: this machine's GPU, if any) says how much
    (bench.plan_scratch); on a CPU target, the scratch of this CPU's kernels that bench.memory.peak_bytes counts
    (bench.memory_ops.cpu_scratch)."""
    _torch_singletons()
    cuda = torch.device(target).type == "cuda"
    allocator = CachingAllocatorModel(current_stream if suite.world_sizes else None) if cuda else None
    scratch = kernel_scratch(gpu) if cuda else cpu_scratch
    ranks = fake_ranks(params.get("world_size", 1)) if suite.world_sizes else nullcontext()
    with ranks, hardware.planning(gpu), MetaKernels(), IndexValues(), target_attention(target, gpu) as kernels, \
            target_flex(target, kernels), \
            target_rms_norm(target), target_offload(target) as offload, target_autocast(target), \
            target_foreach(target), TensorMemoryTracker(allocator, host_builds=not cuda, scratch=scratch) as total:
        try:
            w = suite.workload(variant, dict(params), META, target)
        except (Skip, NotPlannable):
            raise
        except Exception as e:  # noqa: BLE001 - the suite's own code raised, before any step: not the meta device
            raise NotPlannable(f"its workload() raised: {type(e).__name__}: {_first_line(e)}") from e
        if not isinstance(w, Workload):
            raise NotPlannable(f"{type(suite).__name__}.workload() returned {type(w).__name__}, not a "
                               "bench.suite.Workload: return Workload(step, ...)")
        if warm_up is None:
            warm_up = not w.stateless
        if warm_up:  # optimizer state, lazy buffers
            w.step()
        total.settle()
        resident = total.live_bytes(META)
        before = allocator.peak_allocated if cuda else total.peak_bytes(META)  # the build's and the warm-up's
        parameters = [p for m in w.modules for p in m.parameters()]
        warm_grads = storage_bytes(p.grad for p in parameters)  # the warm-up's, which the step frees or reuses
        if clear and w.clear is not None:  # what the measured window leaves out: the previous step's gradients
            w.clear()
        total.reset_peak()
        if cuda:
            base, reserved = allocator.allocated, allocator.peak_reserved
            allocator.reset_peak()
        # not activations: the parameters, and the unsharded ones FSDP2 all-gathers, which it frees after the forward
        ignore = [*parameters, *map(local_tensor, parameters), *unsharded(w.modules)]
        with SavedTensorBytes(ignore=ignore) as saved, StepCounter(cuda) as counted, \
                TensorMemoryTracker(scratch=None if cuda else scratch) as step:
            w.step()
        held = w.held() if w.held is not None else 0
        total.settle()
        step_peak = allocator.peak_allocated - base if cuda else step.peak_bytes(META)
        peak = max(before, allocator.peak_allocated if cuda else total.peak_bytes(META))
        param_bytes = storage_bytes(parameters)
        optimizer = storage_bytes(v for s in w.optimizer.state.values() for v in s.values()) if w.optimizer else 0
        return {"step_peak_bytes": step_peak + held, "peak_bytes": peak,
                "reserved_bytes": max(reserved, allocator.peak_reserved) if cuda else None,
                "resident_bytes": resident, "held_bytes": held,
                "other_bytes": resident - param_bytes - optimizer - warm_grads, "param_bytes": param_bytes,
                "optimizer_bytes": optimizer,
                "grad_bytes": storage_bytes(p.grad for p in parameters),
                "activation_bytes": saved.total(META), "flops": counted.flops + w.uncounted_flops,
                "flops_by_dtype": _with_uncounted(counted.by_dtype, w.uncounted_flops, params.get("dtype")),
                "bytes_moved": counted.bytes + w.uncounted_bytes,
                "attention": sorted(kernels), "host_bytes": offload.peak_host_bytes or None}


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _with_uncounted(by_dtype: dict[str, int], uncounted: int, declared: str | None) -> dict[str, int]:
    """FLOPs per dtype with a workload's uncounted ones (its Triton kernels') in the dtype most FLOPs run in (the
    case's "dtype" param where none are counted)."""
    out = dict(by_dtype)
    if uncounted:
        dtype = max(out, key=out.get) if out else declared or "unknown"
        out[dtype] = out.get(dtype, 0) + uncounted
    return out


def _torch_singletons() -> None:
    """Make the tensors torch makes once a process on the meta device before a plan's trackers start: a step whose
    first use of them falls in its window would count them as its memory (and the same case planned again would
    not). Nested tensors' view dummy (60 B, a 1 KiB difference in rmpad's nested peaks)."""
    try:
        from torch.nested._internal.nested_tensor import _nt_view_dummy
    except ImportError:  # a torch without it makes none
        return
    _nt_view_dummy()


def plan_case(suite: Suite, variant: str, params: dict, target: str, gpu: str | None = None,
              capacity_bytes: int | None = None) -> Prediction:
    """One case's Prediction for `target` ("cpu" or "cuda"), against `gpu` (a bench.hardware name) when given and
    a memory of `capacity_bytes` (default: the GPU's, from bench.hardware)."""
    p = Prediction(suite.name, variant, dict(params), "ok", target=target, gpu=gpu, dtype=params.get("dtype"))
    try:
        why = suite.unsupported_world_size(params.get("world_size", 1))
        if why:
            raise Skip(why)
        raw = run_step(suite, variant, params, target, gpu=gpu)
    except Skip as e:
        p.status, p.reason = "skipped", str(e) or "skipped"
        return p
    except NotPlannable as e:
        p.status, p.reason = "not_plannable", str(e)
        return p
    except Exception as e:  # noqa: BLE001 - a step that cannot run on meta is not plannable: say why, never guess
        p.status, p.reason = "not_plannable", f"its step does not run on the meta device: {type(e).__name__}: " + \
            _first_line(e)
        return p
    p.parts = {"parameters": raw["param_bytes"], "gradients": raw["grad_bytes"], "optimizer": raw["optimizer_bytes"],
               "activations": raw["activation_bytes"], "inputs": max(0, raw["other_bytes"])}
    p.parts["transient"] = max(0, raw["peak_bytes"] - sum(p.parts.values()))
    p.step_peak_bytes, p.peak_bytes, p.reserved_bytes = raw["step_peak_bytes"], raw["peak_bytes"], raw["reserved_bytes"]
    p.flops, p.bytes_moved, p.attention, p.host_bytes = raw["flops"], raw["bytes_moved"], raw["attention"], \
        raw["host_bytes"]
    p.flops_by_dtype = raw["flops_by_dtype"]
    if p.flops_by_dtype:  # what the step computes in on the target, not what its params say
        p.dtype = max(p.flops_by_dtype, key=p.flops_by_dtype.get)
    p.roofline_ms = roofline_ms(gpu, p.flops_by_dtype, p.bytes_moved)
    p.capacity_bytes = capacity_bytes or hardware.memory_bytes(gpu)
    if p.capacity_bytes is not None:
        p.headroom_bytes = headroom(p.peak_bytes)
        p.fits = p.peak_bytes + p.headroom_bytes <= p.capacity_bytes
    return p


def plan_points(suites: list[Suite], size: str, target: str, variants=None, params_filter: dict | None = None,
                world_size: int = 1, cases_like: list[str] | None = None,
                changes: dict[str, str] | None = None) -> list[tuple[Suite, dict, list[str]]]:
    """The grid points a plan covers, in a run's order, each (suite, params, its variants): the grid the target's
    run would expand (a distributed suite's at `world_size`), kept to `variants`, to the params `params_filter`
    matches and to the case ids one of the globs `cases_like` matches; then with `changes` (`bench plan --set`) made
    to their params (with_changes), points made equal planned once, points without every param changed left out."""
    points, seen, lacking = [], set(), set()  # lacking: the params of the selected points that --set left out
    ruled_out: list[str] = []  # the variants a point changed by --set has no case of
    for suite in suites:
        for params in suite.points(size, grid_device(target)):
            if suite.world_sizes:
                params = {**params, "world_size": world_size}
            if params_filter and any(str(params.get(k)) != str(v) for k, v in params_filter.items()):
                continue
            chosen = [v for v in suite.variants if (not variants or v in variants) and suite.has_case(v, params)
                      and (cases_like is None or any(fnmatch.fnmatchcase(case_id(suite.name, v, params), g)
                                                     for g in cases_like))]
            if chosen and changes:  # the cases selected as the grid holds them, then changed
                if not set(changes) <= set(params):
                    lacking |= set(params)  # another suite's, or another part's, point: not changed, left out
                    continue
                params = with_changes(params, changes)
                ruled_out += [v for v in chosen if not suite.has_case(v, params)]
                chosen = [v for v in chosen if suite.has_case(v, params)]  # a changed param may rule a variant out
                if (key := (suite.name, json.dumps(params, sort_keys=True, default=str))) in seen:
                    continue
                seen.add(key)
            if chosen:
                points.append((suite, params, chosen))
    if changes and not points:
        nothing_changed(changes, lacking, ruled_out)
    return points


def plan(suites: list[Suite], size: str, target: str, gpu: str | None = None, variants=None,
         params_filter: dict | None = None, capacity_bytes: int | None = None, jobs: int = 1,
         progress=None, world_size: int = 1, cases_like: list[str] | None = None,
         changes: dict[str, str] | None = None) -> list[Prediction]:
    """Every case of `suites` at `size` on `target`, planned (`plan_points` says which, and in what order): as one
    rank of `world_size` for a distributed suite, as `bench run` would launch it.
    With `jobs` > 1 the grid points are planned in that many forked processes, a point's variants in one (so what a
    suite caches per point, such as packing's lengths and packings, serves all of them): each case's step on meta is
    Python dispatch, one CPU a process, and full sizes take minutes on one. A case whose process dies (killed for
    host memory) is not plannable, saying so, and the others are planned (bench.plan_pool). `progress(planned,
    total)` is told each time a grid point's cases are planned."""
    points = plan_points(suites, size, target, variants, params_filter, world_size, cases_like, changes)
    how, total, planned = (target, gpu, capacity_bytes), sum(len(c) for _, _, c in points), 0

    def told(cases: list[Prediction]) -> list[Prediction]:
        nonlocal planned
        planned += len(cases)
        if progress is not None:
            progress(planned, total)
        return cases

    # one process where torch sees a CUDA device: once this process has asked for the device count (is_available
    # does), a forked child cannot initialise CUDA, and a plan asks the GPU (torch's SDPA choice, a suite's support)
    if jobs <= 1 or len(points) < 2 or "fork" not in mp.get_all_start_methods() or torch.cuda.is_available():
        return [p for i in range(len(points)) for p in told(_plan_point(points, i, how))]
    # forked, not spawned: the workers inherit the suites (a plug-in's or a test's too) and torch already imported,
    # torch._dynamo too, which a dispatch mode's first op imports (1.7 s a process); only the point's index goes to a
    # worker, and its Predictions come back. What is alive is frozen out of the workers' collections (freeze_alive).
    importlib.import_module("torch._dynamo")
    freeze_alive()
    global _FORKED, _STARTED
    _FORKED, _STARTED, done, pending = points, mp.get_context("fork").RawArray("b", len(points)), {}, range(len(points))
    try:
        while pending:
            broken = []
            with ProcessPoolExecutor(min(jobs, len(pending)), mp_context=mp.get_context("fork"),
                                     initializer=torch.set_num_threads, initargs=(1,)) as pool:
                try:  # handing the points over too: the `with` would wait for those handed over so far
                    futures = {pool.submit(_plan_forked, i, how): i for i in pending}
                    for f in as_completed(futures):
                        try:
                            done[futures[f]] = told(f.result())
                        except BrokenProcessPool:  # a worker died (killed for host memory): every unfinished point's
                            broken.append(futures[f])
                except BaseException:  # Ctrl-C, SIGTERM (bench.cli raises it here): the plan ends now
                    stop(pool)
                    raise
            # the points a worker had started are planned again case by case, alone (bench.plan_pool), so that the
            # case that kills its process is told apart; those none had started, in a new pool (alone as well where
            # none was started or done: no pool goes on forever)
            again = [i for i in broken if not _STARTED[i]]
            for i in sorted(broken if len(again) == len(pending) else set(broken) - set(again)):
                done[i] = told(one_by_one(functools.partial(_plan_one, i, how), len(points[i][2]),
                                          functools.partial(_died, i, how)))
            pending = sorted(i for i in again if i not in done)
        # A process whose autograd engine started its device threads (a test worker after a backward on a device
        # torch counts) forks children that cannot run backward: such points are planned again here
        return [p for i in range(len(points))
                for p in (_plan_point(points, i, how) if any(AUTOGRAD_FORK in (q.reason or "") for q in done[i])
                          else done[i])]
    finally:
        _FORKED = _STARTED = None


AUTOGRAD_FORK = "Autograd-and-Fork"
"""In the error torch raises at a backward in a child forked from a process whose autograd threads had started."""


_FORKED: list | None = None
"""The grid points of the plan in progress, for the processes forked to plan them."""
_STARTED = None
"""Shared with those processes: 1 for each grid point one of them has started to plan."""


def _plan_forked(i: int, how: tuple) -> list[Prediction]:
    _STARTED[i] = 1
    return _plan_point(_FORKED, i, how)


def _plan_one(i: int, how: tuple, k: int) -> Prediction:
    suite, params, chosen = _FORKED[i]
    return plan_case(suite, chosen[k], params, *how)


def _died(i: int, how: tuple, k: int, exitcode: int | None) -> Prediction:
    suite, params, chosen = _FORKED[i]
    return Prediction(suite.name, chosen[k], dict(params), "not_plannable", reason=died(exitcode), target=how[0],
                      gpu=how[1], dtype=params.get("dtype"))


def _plan_point(points: list, i: int, how: tuple) -> list[Prediction]:
    suite, params, chosen = points[i]
    return [plan_case(suite, variant, params, *how) for variant in chosen]


def predict_peak(suite: Suite, variant: str, params: dict, device: str) -> int | None:
    """The peak_mem_bytes a case's run on `device` should measure, predicted on meta; None where it is not plannable
    (or the variant cannot run there). For the runner, to record predicted_peak_mem_bytes beside the measured peak."""
    p = plan_case(suite, variant, params, torch.device(device).type)
    return p.step_peak_bytes if p.status == "ok" else None


def grid_device(target: str) -> str:
    """The device a target's grid is asked for: its sizes and dtypes are those of a run there."""
    return "cuda:0" if target.startswith("cuda") else "cpu"
