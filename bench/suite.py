"""The Suite contract and the registry.

A suite names its variants, expands a grid of params per size, and measures one (variant, params) case on a device.
Suites live in the top-level `suites` package, one module each, and register themselves with `@register`; the harness
finds them by importing every module of that package (`discover`), never by name, and by importing the modules other
installed packages name in the `techbench.suites` entry-point group.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import numbers
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from bench import metrics as metric_specs
from bench.case_ids import NAME, NAME_RULE
from bench.case_ids import case_id as case_id  # re-exported: the suites' and runner's name for it
from bench.metrics import Metric

if TYPE_CHECKING:
    from bench.timing import Timing
    from bench.work import Work

SIZES = ("smoke", "quick", "full")
SUITES: dict[str, Suite] = {}


class Skip(Exception):
    """Raised by `measure` when a variant cannot run here; the case is recorded as skipped with this reason."""


class NotPlannable(Exception):
    """Raised by `workload` (or while its step runs on the meta device) when a case cannot be predicted from shapes
    alone; `bench plan` reports the case as not plannable with this reason, never a guess."""


def requires(*modules: str, pip: str | None = None) -> None:
    """Raise Skip naming what to install when one of `modules` cannot be imported (an optional package)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"needs {', '.join(missing)}, which is not installed (pip install {pip or ' '.join(missing)})")


def off_cuda(suite: Suite, variant: str, device: str | None) -> str | None:
    """Why `variant` cannot run on `device`: its kernel runs on CUDA alone (Suite.cuda_only); None where it can."""
    if device is not None and not device.startswith("cuda") and variant in suite.cuda_only:
        return f"{suite.cuda_only[variant]} runs on CUDA only: skipped on {device}"
    return None


def unmet(suite: Suite, variant: str, device: str | None = None) -> str | None:
    """Why `variant` cannot run here, on `device`: a CUDA-only kernel off CUDA (Suite.cuda_only), or for want of a
    package its suite declares (Suite.requires); None where it can. Cheap (no import, no process): asked per case."""
    if (why := off_cuda(suite, variant, device)) is not None:
        return why
    need = suite.requires.get(variant)
    if need is None:
        return None
    try:
        requires(need[0], pip=need[1])
    except Skip as e:
        return str(e)
    return None


class GridError(ValueError):
    """A suite's grid holds a point no record can spell (bench.suite.Suite.points): a fault of the suite, said in one
    line (exit 2), not a traceback."""


class SuiteError(ValueError):
    """A suite class that cannot register, or a suites module that does not import: one line naming where (exit 2)."""


@dataclass(frozen=True)
class Relative:
    """A ratio against the suite's reference variant at the same params, added by the runner.

    new/ref when `invert` is False (e.g. time_overhead_x = step_time_ms / ref step_time_ms),
    ref/new when it is True (e.g. mem_saving_x = ref peak_mem_bytes / peak_mem_bytes).
    """

    name: str
    metric: str
    invert: bool = False

    def __post_init__(self):
        assert self.name.endswith("_x"), f"ratio metric {self.name!r} must end in _x"

    def of(self, metrics: dict, ref_metrics: dict) -> float | None:
        new, ref = metrics.get(self.metric), ref_metrics.get(self.metric)
        if not isinstance(new, (int, float)) or not isinstance(ref, (int, float)):
            return None
        num, den = (ref, new) if self.invert else (new, ref)
        return num / den if den else None


@dataclass(frozen=True)
class Part:
    """A sub-benchmark of a suite, named by its cases' `part` param: its own variants (the reference first unless
    `reference` says otherwise) and its own ratios against that reference. A variant a part does not list has no case
    at that part's grid points (no record at all, not a skip)."""

    variants: tuple[str, ...]
    relative: tuple[Relative, ...] = ()
    reference: str | None = None
    description: str = ""

    def __post_init__(self):
        assert self.variants, "a part has at least one variant"
        assert self.reference is None or self.reference in self.variants, f"reference {self.reference!r} not a variant"

    def reference_variant(self) -> str:
        return self.reference or self.variants[0]


@dataclass
class Measurement:
    """What `measure` returns: summary metrics (name -> number, bool or None) and raw samples (name -> list): the
    repeated measurements behind a metric (under its name), or a named series a figure draws (`*_curve`, e.g. the loss
    per training step)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    timed: Timing | None = None
    """The headline timing, if any: GPU telemetry is summarised over its window (not the set-up around it), and
    energy_per_call_j = mean power in that window x its median time."""
    timings: dict[str, Timing] = field(default_factory=dict)
    """Named timings (e.g. {"greedy_time": t}): the runner adds each one's t.metrics(name) and t.samples(name) to the
    record, so a suite declares them with bench.metrics.timing(name, ...) and never copies medians by hand."""
    work: list[Work] = field(default_factory=list)
    """What a call of each timing did (bench.work): the runner derives rates, % of peak, the roofline bound and
    energy per unit from it, declared by the suite with bench.work.rates(...)."""


@dataclass
class Workload:
    """One case's step, built by `Suite.workload` with its tensors on a device: the step `measure` runs, and the step
    `bench plan` runs on the meta device (no data, no compute) to predict its memory and FLOPs for a target."""

    step: Callable[[], Any]
    """One step as the case measures it. Its first call is the warm-up: lazy state (optimizer moments, a filled
    cache) is made there, and the peak the case reports is that of a later call."""
    modules: tuple[Any, ...] = ()
    """The nn.Modules whose parameters, and their gradients, the plan reports as parameters and gradients."""
    optimizer: Any = None
    """The optimizer `step` runs, if any: its state is reported as optimizer state."""
    held: Callable[[], int] | None = None
    """Bytes the case's peak_mem_bytes counts beyond the step's own peak (e.g. a KV cache filled before the step)."""
    clear: Callable[[], Any] | None = None
    """Frees what a step leaves for the next (its gradients), which the step does first: the case measures its peak
    with this run just before (bench.memory.peak_bytes), so that the step's gradients count on every device."""
    stateless: bool = False
    """True where a step leaves nothing a later one reads: no optimizer, no lazy buffers, gradients set to None at
    its start. The plan then runs it once, without a warm-up: the same peak, at half the cost (a full rmpad case's
    segments: ~25 k ops a step on meta)."""
    uncounted_flops: int = 0
    """FLOPs a step's kernels do where no op shows them to the plan's counter (a Triton kernel launched from Python):
    the plan adds them to what it counts."""
    uncounted_bytes: int = 0
    """Bytes those kernels read and write, which the plan adds to its bytes moved alike."""


class Suite:
    """Base class: set the class attributes, implement `grid` and `measure` (and `workload`, for `bench plan`)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    variants: ClassVar[dict[str, str]]
    """variant name -> one-line description; the first is the reference when `reference` is unset."""
    reference: ClassVar[str | None] = None
    relative: ClassVar[tuple[Relative, ...]] = ()
    metrics: ClassVar[tuple[Metric, ...]] = ()
    """Every metric `measure` emits, declared once (bench.metrics): unit, direction, kind, meaning. The harness adds
    the specs of what it emits itself (telemetry, rank spreads, `relative` ratios); see `metric_specs`."""
    cpu_threads: ClassVar[int | None] = None
    """torch intra-op threads for this suite's CPU cases, set by the runner before `measure` (and recorded in run.json);
    None keeps torch's default. `bench run --threads N` overrides it. A suite never sets the thread count itself."""
    parts: ClassVar[dict[str, Part]] = {}
    """Sub-benchmarks by name: each grid point of a suite with parts names its part in params["part"]."""
    world_sizes: ClassVar[tuple[int, ...]] = ()
    """A distributed suite lists the world sizes it supports: each case is then one job of ranks (bench.distributed)
    whose ranks all call `measure` with torch.distributed initialised, and its params gain `world_size`."""
    param_defaults: ClassVar[dict[str, str]] = {}
    """What a grid point without a param runs, by param ({"model": "techbench"}: points without `model` train this
    project's own model), for a report to name such points; recorded in run.json."""
    libraries: ClassVar[dict[str, str]] = {}
    """Variants that run a third-party library rather than this project's code: variant -> the library's name and
    version ("torchao 0.18.0"), so that a report can tell ours, a library's and the reference apart."""
    requires: ClassVar[dict[str, tuple[str, str]]] = {}
    """Variants that need an optional package: variant -> (the module they import, what to pip install). Where it is
    not installed, the case is recorded as skipped with the install line before any process starts for it (see
    `unmet`); `measure` and `workload` still call `requires` themselves, for the callers that do not ask first."""
    cuda_only: ClassVar[dict[str, str]] = {}
    """Variants whose kernel runs on CUDA alone: variant -> what it is ("flash-attn's varlen kernel"). Off CUDA the
    case is skipped saying so, before `requires`: an install line would not help there."""
    not_plannable: ClassVar[str | None] = None
    """Why `bench plan` cannot predict this suite's cases, for a suite without `workload`: what it would need that
    shapes alone do not give. None: the plan says only that the suite builds no workload."""
    preload: ClassVar[tuple[str, ...]] = ()
    """Modules this suite's cases import that are slow to import (a library its variants import lazily, such as
    diffusers): the process that cases fork from imports them once, so that no case's time or timeout pays for them.
    One not installed is left out."""

    def points(self, size: str, device: str) -> list[dict[str, Any]]:
        """grid(size, device), each point checked: a dict of text keys whose values are text, numbers, booleans or
        null (they spell the case_id and go into every record as JSON); GridError, one line, for any other."""
        points = self.grid(size, device)
        for params in points:
            if not isinstance(params, dict):
                raise GridError(f"suite {self.name}: its {size} grid on {device} holds {type(params).__name__} "
                                f"{params!r:.60}, not a dict of params")
            for k, v in params.items():  # a numpy number is one (records write its .item()); NaN is none (null)
                number = isinstance(v, numbers.Real) and (isinstance(v, numbers.Integral) or math.isfinite(v))
                if not isinstance(k, str) or not (v is None or isinstance(v, str) or number):
                    raise GridError(f"suite {self.name}: its {size} grid on {device} has param {k!r} = {v!r:.60} "
                                    f"({type(v).__name__}); params are text, finite numbers, true/false or null "
                                    "(they spell the case id)")
        return points

    def grid(self, size: str, device: str) -> list[dict[str, Any]]:
        """The params of every case at `size` (one of SIZES) on `device` ("cpu" or "cuda:N"); JSON scalar values.

        The device may choose what a case is (bf16 on CUDA, fp32 on CPU) but the params then say so, so that a
        case_id always names one workload.
        """
        raise NotImplementedError

    def measure(self, variant: str, params: dict[str, Any], device: str) -> Measurement:
        """Run one case on `device` ("cpu" or "cuda:N"); raise Skip when the variant cannot run there."""
        raise NotImplementedError

    def workload(self, variant: str, params: dict[str, Any], device: str, target: str | None = None) -> Workload:
        """The step a case measures, built with its tensors on `device`, which may be "meta": then `target` ("cpu" or
        "cuda:N") is the device the plan predicts for, whose kernels and support checks apply: for a CUDA target, of
        the GPU bench.hardware.planned_gpu() names, which a check asks of torch only where bench.hardware.here says
        it is this machine's (else from its table entry, or NotPlannable saying so). A suite that builds its step
        here, and has `measure` use it, gets `bench plan` for free: the two cannot drift apart.

        Raise Skip where the variant cannot run on the target (as `measure` does), NotPlannable where the case has no
        step that shapes alone decide (a whole training run, a compiled kernel). The default: no workload, for the
        reason `not_plannable` gives."""
        raise NotPlannable(self.not_plannable or f"suite {self.name!r} does not build its step through Suite.workload")

    def applies(self, variant: str, params: dict[str, Any]) -> bool:
        """Whether `variant` has a case at `params`. A grid point that does not exist for a variant (a one-pass
        sampler at 8 model calls) is no case at all; a case that exists but cannot run on this device raises Skip in
        `measure` and is recorded as skipped."""
        return True

    def part_of(self, params: dict[str, Any]) -> Part | None:
        """The part a case belongs to, or None for a suite without parts."""
        if not self.parts:
            return None
        if params.get("part") not in self.parts:
            raise ValueError(f"{self.name}: a grid point names part {params.get('part')!r}, "
                             f"not one of {list(self.parts)}")
        return self.parts[params["part"]]

    def reference_variant(self, params: dict[str, Any] | None = None) -> str:
        """The reference of the part `params` belong to; without params (or parts), the suite's."""
        part = self.part_of(params) if params is not None and self.parts else None
        return part.reference_variant() if part else self.reference or next(iter(self.variants))

    def relative_for(self, params: dict[str, Any]) -> tuple[Relative, ...]:
        part = self.part_of(params)
        return part.relative if part else self.relative

    def has_case(self, variant: str, params: dict[str, Any]) -> bool:
        """Whether `variant` has a case at `params`: its part lists it, and `applies` agrees."""
        part = self.part_of(params)
        return (part is None or variant in part.variants) and self.applies(variant, params)

    def describe(self) -> dict[str, Any]:
        """What run.json records of this suite, for readers that cannot import it (reports, compare, history)."""
        return {"description": self.description, "reference": self.reference_variant(),
                "variants": dict(self.variants), "libraries": dict(self.libraries),
                "param_defaults": dict(self.param_defaults),
                "world_sizes": list(self.world_sizes),
                "relative": [{"name": r.name, "metric": r.metric, "invert": r.invert} for r in self.relative],
                "parts": {name: {"description": p.description, "variants": list(p.variants),
                                 "reference": p.reference_variant(),
                                 "relative": [{"name": r.name, "metric": r.metric, "invert": r.invert}
                                              for r in p.relative]} for name, p in self.parts.items()},
                "metrics": {name: spec.to_json() for name, spec in self.metric_specs().items()}}

    def unsupported_world_size(self, world_size: int) -> str | None:
        """Why this distributed suite cannot run at `world_size` (None where it can): the runner's and the plan's."""
        if self.world_sizes and world_size not in self.world_sizes:
            return f"{self.name} runs at world sizes {', '.join(map(str, self.world_sizes))}, not {world_size}"
        return None

    def metric_specs(self) -> dict[str, Metric]:
        """Every metric a record of this suite can hold: the suite's own, the runner's telemetry and interference
        metrics, each `relative` ratio, and for a distributed suite the rank spreads of every numeric metric."""
        specs = {m.name: m for m in (*self.metrics, *metric_specs.TELEMETRY, *metric_specs.INTERFERENCE)}
        if self.world_sizes:
            specs.update({r.name: r for m in list(specs.values()) for r in metric_specs.ranks(m)})
        runner = (metric_specs.IDLE_WAIT, metric_specs.PREDICTED, metric_specs.PREDICTED_RESERVED,
                  metric_specs.RESERVED, metric_specs.ARTIFACTS)
        for runner_own in runner:  # after the ranks: no rank spread, but for the memory each rank predicts and holds
            specs[runner_own.name] = runner_own
            if self.world_sizes and runner_own.name.endswith("_bytes"):
                specs.update({r.name: r for r in metric_specs.ranks(runner_own)})
        for rel in (*self.relative, *(r for p in self.parts.values() for r in p.relative)):
            of = specs.get(rel.metric) or metric_specs.default(rel.metric)
            specs[rel.name] = metric_specs.ratio(rel.name, of, rel.invert)
        return specs


def warn_undeclared(suite: Suite, metrics: dict, said: set[str]) -> None:
    """A warning, once a run, for each metric a suite's record holds that the suite does not declare (metric_specs):
    readers would take it for info and never judge it, which a typo'd name in a plug-in's measure() hides."""
    new = sorted(m for m in set(metrics) - set(suite.metric_specs()) if f"{suite.name}/{m}" not in said)
    if new:
        said.update(f"{suite.name}/{m}" for m in new)
        warnings.warn(f"suite {suite.name} recorded metric{'s' * (len(new) > 1)} it does not declare: "
                      f"{', '.join(new)} (read as info and never judged; declare {'them' if len(new) > 1 else 'it'} "
                      "in the suite's metrics)", stacklevel=3)


def register(cls: type[Suite]) -> type[Suite]:
    """Class decorator: instantiate and add to SUITES under `cls.name`; SuiteError for a class that cannot be one."""
    unknown = {f"part {n!r} lists unknown variants": set(p.variants) - set(cls.variants) for n, p in cls.parts.items()}
    unknown["requires names unknown variants"] = set(cls.requires) - set(cls.variants)
    unknown[f"has {NAME_RULE}"] = {n for n in (cls.name, *cls.variants) if not NAME.fullmatch(str(n))}
    rels = (*cls.relative, *(r for p in cls.parts.values() for r in p.relative))  # a typo'd metric: ratios of None
    unknown["has a Relative of metrics it does not declare"] = {r.metric for r in rels} - set(cls().metric_specs())
    taken = type(SUITES[cls.name]) if cls.name in SUITES else cls
    why = (f"{taken.__module__} and {cls.__module__} both name a suite {cls.name!r}; rename one" if taken is not cls
           else f"suite {cls.name!r} has no variants" if not cls.variants
           else next((f"suite {cls.name!r} {k}: {', '.join(sorted(u))}" for k, u in unknown.items() if u), None))
    if why:
        raise SuiteError(why)
    SUITES[cls.name] = cls()
    return cls


ENTRY_POINTS = "techbench.suites"  # how another package adds suites: `name = "pkg.module"`, whose import registers


def discover(package: str = "suites") -> dict[str, Suite]:
    """Import every module of `package` and of each `techbench.suites` entry point, so that their suites register;
    those suites by name. A plug-in that fails is left out with one warning; a module of `package`, SuiteError."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        try:
            importlib.import_module(info.name)
        except Exception as e:  # a suite being written (a typo, a bad Metric): its own file and line, not importlib's
            from bench.case import import_failure
            raise SuiteError(import_failure(e, importlib.util.find_spec(info.name).origin)) from e
    prefixes = [f"{package}."]
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - someone else's package must not stop the built-in suites
            who = ep.dist.name if ep.dist else ep.value
            warnings.warn(f"suites of {who} ({ep.value}) not loaded: {type(e).__name__}: {e}", stacklevel=2)
            continue
        prefixes += [ep.module, f"{ep.module}."]
    return {name: s for name, s in sorted(SUITES.items())
            if any(type(s).__module__ == p or (p.endswith(".") and type(s).__module__.startswith(p))
                   for p in prefixes)}


def run_dtype(device: str) -> str:
    """The dtype a suite's cases compute in on `device`, as its grid's "dtype" param: bfloat16 on CUDA (what models
    train and serve in there), float32 on CPU (where bf16 matmuls are emulated and slow)."""
    return "bfloat16" if device.startswith("cuda") else "float32"


def build_module(factory: Callable[[], Any], device: str, dtype: Any = None) -> Any:
    """`factory()` (an nn.Module) on `device` in `dtype`: built on the CPU and moved, so that every device gets the
    same seeded weights, except on the meta device, where it is built in place (no storage, no initialisation: a
    1B-parameter model costs the plan nothing), as one built on the host and copied (bench.memory.built_on_host): a
    GPU's tracker counts each tensor once, in its final dtype, as Module.to copies it."""
    import torch

    if torch.device(device).type == "meta":
        from bench.memory import built_on_host

        def build():
            with torch.device("meta"):
                module = factory()
            return module.to(dtype=dtype) if dtype is not None else module

        return built_on_host(build)
    return factory().to(device, dtype)


def directions(suite: str, names) -> dict[str, str | None]:
    """The declared direction of each metric of a registered suite (unit-suffix defaults for the undeclared)."""
    specs = SUITES[suite].metric_specs()
    return {m: (specs.get(m) or metric_specs.default(m)).direction for m in names}
