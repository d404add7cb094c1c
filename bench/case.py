"""One case: what it is (Case), and measuring it (execute), the same in every launcher.

A launcher (bench.launchers) decides where `execute` runs: in the `bench` process, in a forked child, or on every
rank of a torchrun job (bench.distributed). The runner plans cases, hands each to a launcher and records the result:
plan -> launcher -> execute -> record, each module importing only the ones after it.
"""

from __future__ import annotations

import importlib
import os
import random
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from bench.artifacts import artifacts_digest, artifacts_read
from bench.hardware import device_name, peak_gbps, peak_tflops
from bench.interference import mem_available_bytes
from bench.progress import forwarding
from bench.suite import SUITES, Measurement, Skip, Suite, SuiteError, case_id, off_cuda
from bench.timing import time_floor
from bench.validation import check_measurement, nonfinite

SEED = 0
TRACEBACK_LINES = 12
OOM_MESSAGES = ("ALLOC_FAILED", "out of memory", "can't allocate memory")


@dataclass(frozen=True)
class Case:
    suite: str
    variant: str
    params: dict[str, Any] = field(hash=False)
    module: str = ""
    """The module that registers the suite, imported by the child process."""
    size: str = ""
    """The size whose grid the params come from: at smoke size the timers take a quarter of their time floor
    (bench.timing.time_floor)."""
    predict: bool = False
    """Predict the case's peak memory on the meta device first (bench.plan; `bench run --predict`) and record it as
    predicted_peak_mem_bytes."""
    skip_predicted_oom: bool = False
    """With predict, on a GPU: a case predicted not to fit in the device's memory is skipped, not run."""

    @property
    def id(self) -> str:
        return case_id(self.suite, self.variant, self.params)

    @property
    def group(self) -> str:
        """Cases that share suite and params: the unit of sharding, so ratios against the reference stay local."""
        return case_id(self.suite, "", self.params)


def _is_oom(exc: BaseException) -> bool:
    import torch

    # cuBLAS and cuDNN report a failed workspace allocation as a plain RuntimeError, and so does torch's CPU
    # allocator ("DefaultCPUAllocator: can't allocate memory: you tried to allocate ...")
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MESSAGES))


def execute(case: Case, device: str, seed: int = SEED, threads: int | None = None,
            progress: str | None = None, prediction: tuple[dict[str, Any], str | None] | None = None) -> dict[str, Any]:
    """Measure one case and say how it ended: {status, metrics, samples, error}. Never raises. `threads`: torch's
    intra-op thread count while it runs (see `cpu_threads`), restored after. `progress`: the file its progress
    messages go to (bench.progress), for `bench` to show. `prediction`: `predict_case`'s answer where the caller made
    it already (a torchrun rank, before its job's process group existed)."""
    previous = None
    try:
        import numpy as np
        import torch

        if threads is not None:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)

        from bench.interference import HostSampler, contended
        from bench.telemetry import Telemetry

        importlib.import_module(case.module)
        suite = SUITES[case.suite]
        if (why := off_cuda(suite, case.variant, device)) is not None:  # called directly (bench profile)
            return {"status": "skipped", "error": why}
        predicted = {}
        if case.predict:  # before the seeds: the plan builds its own model
            predicted, too_big = prediction if prediction is not None else predict_case(suite, case, device)
            if too_big:
                return {"status": "skipped", "error": too_big}
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        group = nullcontext()
        if suite.world_sizes:  # a group of its own at world size 1; inside a torchrun rank, the job's
            from bench.distributed import one_rank_group

            group = one_rank_group(device)
        fresh = _fresh_allocator(device) if case.predict else False
        with Telemetry(device) as telemetry, HostSampler() as host, group, forwarding(progress), \
                time_floor(case.size), artifacts_read() as artifacts:
            m = suite.measure(case.variant, dict(case.params), device)
        if not isinstance(m, Measurement):  # else an AttributeError deep in here names neither measure nor the fix
            return {"status": "error", "error": f"{type(suite).__name__}.measure() returned {type(m).__name__}, "
                    "not a bench.suite.Measurement: return Measurement(metrics, timed=..., timings=...)"}
        window = m.timed.window_s if m.timed else None
        gpu = telemetry.summary(window=window)
        named = {k: v for name, t in m.timings.items() for k, v in t.metrics(name).items()}
        metrics = {**named, **m.metrics, **{k: v for k, v in gpu.items() if k != "throttle_reasons"},
                   **_most_disturbed(host, telemetry, window, m.timings.values())}
        metrics["contended"] = contended(metrics, window is not None or any(t.window_s for t in m.timings.values()))
        metrics.update(predicted)
        if artifacts:
            metrics["artifacts_digest"] = artifacts_digest(artifacts)
        if case.predict and device.startswith("cuda"):
            metrics["reserved_mem_bytes"] = _reserved(device) if fresh else None
        samples = {**{k: v for name, t in m.timings.items() for k, v in t.samples(name).items()}, **m.samples}
        power = gpu["avg_power_w"]
        if m.timed is not None:
            metrics["energy_per_call_j"] = None if power is None else power * m.timed.median_ms / 1e3
        metrics.update(_derived(m, device, power))
        named = nonfinite(metrics)  # before check_measurement makes them null
        try:  # plain numbers before the result leaves this process (a tensor metric would not cross the pipe)
            metrics, samples = check_measurement(metrics, samples)
        except ValueError as e:
            return {"status": "error", "error": f"measure() returned what a record cannot hold: {e}"}
        return {"status": "ok", "metrics": metrics, "samples": samples, "error": None,
                **({"nonfinite": named} if named else {})}
    except Skip as e:
        return {"status": "skipped", "error": str(e) or "skipped"}
    except BaseException as e:  # noqa: BLE001 - every way a case can end is a result to record
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"status": "oom" if _is_oom(e) else "error", "error": traceback_tail(e) + _host_oom_line(e)}
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)


def traceback_tail(e: BaseException) -> str:
    """The last TRACEBACK_LINES lines of `e`'s traceback: a failed case's error."""
    return "\n".join("".join(traceback.format_exception(e)).rstrip().splitlines()[-TRACEBACK_LINES:])


def import_failure(e: BaseException, path: str) -> str:
    """One line for module file `path` whose import raised `e`: path:line of its own last frame (or of the syntax
    error), and the exception. A bad Metric's ValueError is raised in bench.metrics, but the line to fix is the
    module's. A SuiteError (bench.suite.register's) says all of it already."""
    if isinstance(e, SuiteError):
        return str(e)
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
    if isinstance(e, SyntaxError) and e.filename == path:
        lines.append(e.lineno)
    return f"{path}{f':{lines[-1]}' if lines else ''}: {type(e).__name__}: {e}"


def _host_oom_line(e: BaseException) -> str:
    """A last line for a MemoryError that says nothing (Python's own, from a list or bytes object too big for the
    host; numpy's and torch's say what they tried to allocate): that the host ran out, and in which frame."""
    if not isinstance(e, MemoryError) or str(e):
        return ""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" in {frames[-1].name} ({frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line})" if frames else ""
    return f"\nthe host ran out of memory (MemoryError){where}"


def predict_case(suite: Suite, case: Case, device: str) -> tuple[dict[str, Any], str | None]:
    """({"predicted_peak_mem_bytes": ..., "predicted_reserved_mem_bytes": ...}, why the case is skipped or None):
    bench.plan's prediction (bytes or None; reserved bytes on a GPU only), and under skip_predicted_oom on a GPU, a
    case whose predicted peak and headroom exceed the device's memory, or whose offloaded copies (bench.plan_offload:
    pinned host memory) exceed the host memory available now."""
    import torch

    from bench import plan

    none = {"predicted_peak_mem_bytes": None, "predicted_reserved_mem_bytes": None}
    try:
        p = plan.plan_case(suite, case.variant, dict(case.params), torch.device(device).type)
    except Exception:  # noqa: BLE001 - a plan that fails is no prediction; the case runs all the same
        return none, None
    if p.status != "ok":
        return none, None
    too_big = None
    if case.skip_predicted_oom and device.startswith("cuda"):
        total = torch.cuda.mem_get_info(torch.device(device))[1]
        spare = plan.headroom(p.peak_bytes)
        gib = 2**30
        if p.peak_bytes + spare > total:
            too_big = (f"predicted not to fit: a peak of {p.peak_bytes / gib:.2f} GiB + {spare / gib:.2f} GiB "
                       f"headroom > the {total / gib:.2f} GiB of {device} (--skip-predicted-oom)")
        # every rank of this node pins its own copies in the one host memory
        elif p.host_bytes and (host := mem_available_bytes()) is not None and \
                p.host_bytes * (ranks := int(os.environ.get("LOCAL_WORLD_SIZE") or 1)) > host:
            each = f" a rank x {ranks} ranks of this node" if ranks > 1 else ""
            too_big = (f"predicted not to fit in host memory: offload's pinned copies hold {p.host_bytes / gib:.2f} "
                       f"GiB{each} > the {host / gib:.2f} GiB available (--skip-predicted-oom)")
    from bench.plan_alloc import default_config

    reserved = p.reserved_bytes if default_config() else None  # the model is of the default configuration
    return {"predicted_peak_mem_bytes": p.step_peak_bytes, "predicted_reserved_mem_bytes": reserved}, too_big


def _most_disturbed(host, telemetry, window, timings) -> dict:
    """The interference metrics (host_*, gpu_*) over the most disturbed of the case's timed windows: the headline
    timing's and each named timing's (a prefill beside the decode, a packer beside the step). One disturbed window
    makes the case contended: a record that passed a disturbed timing as clean would let compare call it slower."""
    from bench.interference import contended as judged

    windows = list(dict.fromkeys(w for w in (window, *(t.window_s for t in timings)) if w))
    found = [{**host.summary(w), **telemetry.interference(w)} for w in windows] or \
        [{**host.summary(None), **telemetry.interference(None)}]
    return max(found, key=lambda d: (judged(d) is True, d.get("host_other_cpus") or 0.0))


def _fresh_allocator(device: str) -> bool:
    """Whether `device` is a GPU whose caching allocator holds nothing for the case to start from, and runs the
    configuration bench.plan_alloc models (no allocator settings). What the process made before the case is let go
    first: cuBLAS's workspaces, which it keeps from its first matmul on (the prediction's FlexAttention probe runs
    one; the case makes its own again, as a process of its own would), and, with no tensor then live, the cached
    segments (the prediction's SDPA-choice proxies; under --inline, earlier cases') and the counters of frees, so that
    `_reserved` reads the case's own."""
    import gc

    import torch

    from bench.plan_alloc import default_config

    if not device.startswith("cuda") or not default_config():
        return False
    if not torch.cuda.is_initialized():
        return True
    gc.collect()
    if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):  # as torch's own leak check does, before it counts
        torch._C._cuda_clearCublasWorkspaces()
    if torch.cuda.memory_allocated(device) == 0:
        torch.cuda.empty_cache()
        torch.cuda.reset_accumulated_memory_stats(device)  # the frees just made are not the case's
    return torch.cuda.memory_reserved(device) == 0


def _reserved(device: str) -> int | None:
    """The caching allocator's reserved bytes now, at the case's end: the most it held over the case, since it gives
    no segment back unasked; None where it gave some back (empty_cache, or a retry under memory pressure), having
    held more before. It covers all of `measure` (its timed repeats too) and the libraries' workspaces."""
    import torch

    stats = torch.cuda.memory_stats(device)
    if stats.get("num_device_free", 0) or stats.get("num_alloc_retries", 0):
        return None
    return stats.get("reserved_bytes.all.current")


def _derived(m: Measurement, device: str, power_w: float | None) -> dict[str, Any]:
    """The metrics each declared Work gives with its timing's median and the device's peaks; energy only over the
    headline timing's window, the one telemetry summarised."""
    out: dict[str, Any] = {}
    gpu = device_name(device) if m.work else None
    for w in m.work:
        t = m.timings.get(w.of)
        if t is None:
            raise ValueError(f"work of {w.of!r} names no timing of the measurement (timings: {sorted(m.timings)})")
        out.update(w.derive(t.median_ms, peak_tflops(gpu, w.dtype) if w.dtype else None, peak_gbps(gpu),
                            power_w if t is m.timed else None))
    return out


def cpu_threads(suite: Suite, device: str, override: int | None, cpus: frozenset[int] | None = None) -> int | None:
    """The intra-op threads a case runs with: on CPU, --threads or else the suite's declaration; None leaves torch's
    default (and on a GPU the host threads only launch kernels). Pinned to `cpus` (--cpus), one a CPU unless
    --threads says otherwise or the suite declares fewer: torch counted the CPUs before the pinning, and more
    threads than CPUs take turns on them."""
    if not device.startswith("cpu"):
        return len(cpus) if cpus else None
    if override is not None:
        return override
    return min(suite.cpu_threads or len(cpus), len(cpus)) if cpus else suite.cpu_threads
