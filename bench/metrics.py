"""What a metric is: its unit, its direction, and whether a clock produced it. Declared once, where it is made.

A suite declares the metrics it emits (`Suite.metrics`); the harness declares those it adds itself (a timing's
spread, GPU telemetry, distributed rank spreads, ratios against the reference). The runner writes every spec into
run.json, and compare, history, dashboard and reports read them from there. For a metric no run declares (a run of
an older techbench), `default(name)` gives generic defaults from the unit suffix only, never from a technique's name.

kind:
- measured: from a clock or a counter that varies run to run (times, rates, energy): compared statistically.
- exact: deterministic for a given commit and machine (bytes counted, FLOPs, a seeded quality): compared exactly.
- derived: a ratio or rate of other metrics (`inputs`): measured when any input is, else exact.
- info: context, never judged (a timing's spread, clocks, flags, which path ran).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

KINDS = ("measured", "exact", "derived", "info")
DIRECTIONS = ("lower", "higher", None)

# Generic defaults by unit suffix: (suffix, unit, kind, direction). Rates before the bare "_s" of durations.
SUFFIXES = (
    ("_noisy", "", "info", None), ("_per_s", "1/s", "measured", "higher"), ("_ms", "ms", "measured", "lower"),
    ("_s", "s", "measured", "lower"), ("_tflops", "TFLOP/s", "measured", "higher"),
    ("_gbps", "GB/s", "measured", "higher"), ("_bytes", "bytes", "exact", "lower"),
    ("_flops", "FLOP", "exact", "lower"),
    ("_j", "J", "measured", "lower"), ("_w", "W", "measured", "lower"), ("_db", "dB", "exact", "higher"),
    ("_mhz", "MHz", "info", None), ("_c", "°C", "info", None), ("_x", "x", "derived", None),
)
SPREAD_MARKERS = ("_p20_", "_p80_", "_iqr_")  # a timing's spread beside its median: context, not a target


@dataclass(frozen=True)
class Metric:
    """One metric's spec. `inputs` names what a derived metric is computed from."""

    name: str
    kind: str
    direction: str | None = None
    """"lower" or "higher" is better; None for a metric that is context, not a target."""
    meaning: str = ""
    unit: str = ""
    inputs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name!r}: direction {self.direction!r} is not lower, higher or None")
        if self.kind == "derived" and not self.inputs:
            raise ValueError(f"derived metric {self.name!r} names no inputs")
        if not self.unit:
            object.__setattr__(self, "unit", _suffix(self.name)[1] if _suffix(self.name) else "")

    def to_json(self) -> dict:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Metric:
        return cls(**{**{k: d[k] for k in cls.__dataclass_fields__ if k in d}, "inputs": tuple(d.get("inputs", ()))})


def _suffix(name: str):
    for entry in SUFFIXES:
        if name.endswith(entry[0]) and not (entry[0] == "_s" and name.endswith("_per_s")):
            return entry
    return None


def default(name: str) -> Metric:
    """Generic spec from the unit suffix alone: for metrics a run did not declare (older runs)."""
    if any(marker in name for marker in SPREAD_MARKERS):
        return Metric(name, "info", None, "a timing's spread", unit="ms")
    entry = _suffix(name)
    if entry is None:
        return Metric(name, "info", None, "undeclared")
    _, unit, kind, direction = entry
    if kind == "derived":  # a ratio of unknown inputs: shown, never judged
        return Metric(name, "info", None, "undeclared ratio", unit=unit)
    return Metric(name, kind, direction, "undeclared", unit=unit)


def timing(name: str, meaning: str) -> tuple[Metric, ...]:
    """The metrics Timing.metrics(name) emits: the median, its p20/p80/IQR and the noisy flag."""
    return (Metric(f"{name}_ms", "measured", "lower", f"median time of {meaning}"),
            *(Metric(f"{name}_{q}_ms", "info", None, f"{q} of the time of {meaning}") for q in ("p20", "p80", "iqr")),
            Metric(f"{name}_noisy", "info", None, f"IQR of the time of {meaning} over 10% of its median"))


# Added by the runner to every case's metrics (bench.telemetry over the timed window; null without NVML).
TELEMETRY = (
    Metric("energy_j", "measured", "lower", "GPU energy over the timed window (NVML counter)"),
    Metric("avg_power_w", "measured", "lower", "mean GPU power over the timed window"),
    Metric("energy_per_call_j", "derived", "lower", "mean power x median time of one timed call",
           inputs=("avg_power_w",)),
    Metric("sm_clock_mhz", "info", None, "mean SM clock over the timed window"),
    Metric("max_temp_c", "info", None, "hottest GPU temperature in the timed window"),
    Metric("throttled", "info", None, "a throttle reason was active in the timed window"),
)

# Added to every case's metrics (bench.interference): what else ran during the timed window; null without one.
INTERFERENCE = (
    Metric("host_cpus", "info", None, "CPUs the case may run on (its affinity)", unit="CPUs"),
    Metric("host_other_cpus", "info", None, "CPUs' worth of busy time outside the case's process tree in the timed "
           "window", unit="CPUs"),
    Metric("host_case_cpus", "info", None, "CPUs' worth of the case's process tree in the timed window", unit="CPUs"),
    Metric("host_case_wait_cpus", "info", None, "CPUs' worth of time the case tree's threads waited for a CPU in the "
           "timed window (run-queue delay, bench.runqueue): what contention cost it", unit="CPUs"),
    Metric("host_load_avg", "info", None, "1-minute load average at the timed window's edges (its highest)"),
    Metric("host_steal_pct", "info", None, "CPU time the hypervisor gave to others (steal) in the timed window",
           unit="%"),
    Metric("host_cpu_psi_pct", "info", None, "time some task waited for a CPU in the timed window (PSI)", unit="%"),
    Metric("host_cpu_mhz_pct", "info", None, "clock of the case's core as % of its max (cpufreq), lowest seen",
           unit="%"),
    Metric("gpu_other_procs", "info", None, "compute processes on the GPU outside the case's tree in the timed "
           "window (most at once)"),
    Metric("gpu_clock_pct", "info", None, "mean SM clock in the timed window as % of its max", unit="%"),
    Metric("gpu_slowdown", "info", None, "thermal or hardware slowdown (or power brake) in the timed window"),
    Metric("contended", "info", None, "something outside the case disturbed its timed window "
           "(bench.interference.reason says what)"),
)
# Added by `bench run --predict` (absent without it): bench.plan's prediction of the case's peak_mem_bytes, made on
# the meta device before the case runs; null where the case is not plannable.
PREDICTED = Metric("predicted_peak_mem_bytes", "info", None, "peak_mem_bytes as bench.plan predicts it from shapes "
                   "alone (meta device), made before the case ran", unit="B")
# With --predict on a GPU: the caching allocator's reserved bytes (its segments) at the case's end, the most it held
# unless it gave segments back under memory pressure (then null), beside bench.plan's model of them (bench.plan_alloc).
PREDICTED_RESERVED = Metric("predicted_reserved_mem_bytes", "info", None, "the CUDA caching allocator's reserved "
                            "bytes over the case as bench.plan's model of it predicts them", unit="B")
RESERVED = Metric("reserved_mem_bytes", "info", None, "the CUDA caching allocator's reserved bytes at the case's "
                  "end: its most, with no segment given back (null if one was); library workspaces included",
                  unit="B")
# Added where a case read cached artifacts (trained weights, reference curves: impls.cache names each on the
# "techbench.artifacts" logger with a digest of its contents): which ones, as one number. Its exact metrics came from
# those numbers; where another run's differ (a GPU retrain adds in another order), compare and the dashboard hold a
# changed value to the threshold rather than exactly.
ARTIFACTS = Metric("artifacts_digest", "info", None, "the first 48 bits of the sha256 of the cached artifacts the case "
                   "read (name:digest of each, sorted)")


def digest_hex(value) -> str | None:
    """An artifacts_digest as the history store keeps it and pages show it: 12 hex digits, an identity, not a quantity
    to group in thousands or take a ratio of; None for anything else (a missing value, NaN, a flag)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return f"{int(value):012x}" if ok else None
# Counts of bytes and FLOPs come from shapes and dtypes, not from the weights' values: other weights leave them exact.
SHAPE_UNITS = ("bytes", "B", "FLOP")


def of_weights(spec: Metric) -> bool:
    """Whether other trained weights (artifacts_digest) may move an exact metric: all but counts of bytes and FLOPs."""
    return spec.unit not in SHAPE_UNITS
# Added by `bench run --wait-idle` (absent without it): the wait is not in the case's elapsed_s or its timeout.
IDLE_WAIT = Metric("idle_wait_s", "info", None, "seconds the case waited, before it started, for other processes to "
                   "leave its CPUs (about the --wait-idle bound: they never did)", unit="s")


def ranks(spec: Metric) -> tuple[Metric, ...]:
    """rank_min_/rank_mean_/rank_max_ of a distributed case's metric: context beside the worst rank's value."""
    return tuple(Metric(f"rank_{s}_{spec.name}", "info", None, f"{s} over ranks of {spec.name}", unit=spec.unit)
                 for s in ("min", "mean", "max"))


def ratio(name: str, of: Metric, invert: bool) -> Metric:
    """A Relative ratio against the reference: new/ref, or ref/new when inverted; better in the input's sense."""
    flip = {"lower": "higher", "higher": "lower", None: None}
    direction = flip[of.direction] if invert else of.direction
    meaning = f"{'reference / this' if invert else 'this / reference'} {of.name}"
    return Metric(name, "derived", direction, meaning, unit="x", inputs=(of.name,))


# Two values of an exact metric are the same when equal, or, for fractions, within this relative distance: a quality
# metric's float sums move in their last digits with the thread count (sliced W2 0.280080241031198 at one thread,
# 0.28008024103119805 at two), while whole numbers (bytes, FLOPs, counts) are held to the unit: 1 byte is a change.
EXACT_RTOL = 1e-9


def nonfinite_worse(kind: str | None, direction: str | None) -> bool:
    """Whether a metric measured `kind` ("nan", "inf", "-inf": a record's nonfinite) is worse than a finite value:
    NaN, or infinite the wrong way for its direction (a loss of inf; an SQNR of inf is an exact result). False
    without a direction (info) or a kind."""
    return direction is not None and kind is not None and (kind == "nan" or (kind == "inf") == (direction == "lower"))


def same_exact(a: float, b: float) -> bool:
    """Whether two values of an exact metric are the same value (EXACT_RTOL)."""
    if a == b:
        return True
    if float(a).is_integer() and float(b).is_integer():
        return False
    return abs(a - b) <= EXACT_RTOL * max(abs(a), abs(b))


def is_clocked(name: str, specs: dict[str, Metric], _seen: frozenset = frozenset()) -> bool:
    """Measured, or derived from something measured (a ratio of times): what compare judges statistically."""
    spec = specs.get(name) or default(name)
    if spec.kind == "measured":
        return True
    if spec.kind != "derived" or name in _seen:
        return False
    return any(is_clocked(i, specs, _seen | {name}) for i in spec.inputs)


def specs_of(metas: list[dict]) -> dict[str, dict[str, Metric]]:
    """suite -> metric -> spec, as the runs' run.json declared them ("suites"); later runs override earlier ones."""
    specs: dict[str, dict[str, Metric]] = {}
    for meta in metas:
        for suite, info in ((meta or {}).get("suites") or {}).items():
            for name, d in ((info or {}).get("metrics") or {}).items():
                try:
                    specs.setdefault(suite, {})[name] = Metric.from_json(d)
                except (TypeError, ValueError):
                    continue  # a spec this techbench cannot read: that metric falls back to its defaults
    return specs
