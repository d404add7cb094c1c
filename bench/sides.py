"""The runs of one side of a comparison (bench.compare), per case: one value per run and metric, never pooled; and
the environments of the two sides, field by field (`environments`).

Reads run directories only: no torch.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.env import measured_gpu
from bench.interference import reason as contention
from bench.machines import gpu_label, measured_by
from bench.records import RECORDS_JSONL, CorruptRunJson, Record, Scan, read_run_json, scan_records


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class CaseRuns:
    """One case on one side, over that side's run directories: one entry per ok run, never pooled."""

    suite: str
    variant: str
    status: str
    error: str | None
    runs: dict[str, list[float]] = field(default_factory=dict)
    """Per metric, one value per ok run: the median of its samples, else its recorded value."""
    samples: dict[str, list[list[float]]] = field(default_factory=dict)
    """Per metric, the samples of each ok run that has some."""
    contended: list[str] = field(default_factory=list)
    """"<run_id>: <reason>" for each ok run whose timed window was disturbed."""
    disturbed: dict[str, list[str | None]] = field(default_factory=dict)
    """Per metric, beside `runs`: that run's entry of `contended` if it was contended, else None."""
    samples_disturbed: dict[str, list[str | None]] = field(default_factory=dict)
    """Per metric, beside `samples`."""
    nonfinite: dict[str, str] = field(default_factory=dict)
    """Per metric measured NaN or infinite in some ok run: what it was ("nan", "inf", "-inf"; NaN first)."""
    artifacts: set[int] = field(default_factory=set)
    """The artifacts_digest of each ok run that read cached artifacts (trained weights): which numbers its exact
    metrics came from."""

    def value(self, metric: str) -> float:
        return float(np.median(self.runs[metric]))

    def undisturbed(self, metric: str) -> CaseRuns:
        """This case's `metric` over its runs that were not contended only."""
        runs = [v for v, d in zip(self.runs[metric], self.disturbed[metric]) if not d]
        samples = [s for s, d in zip(self.samples.get(metric, ()), self.samples_disturbed.get(metric, ())) if not d]
        return CaseRuns(self.suite, self.variant, self.status, self.error, {metric: runs} if runs else {},
                        {metric: samples} if samples else {})


def merge(records: list[Record]) -> CaseRuns:
    """The records of one case, one per run directory."""
    ok = [r for r in records if r.status == "ok"]
    last = records[-1]
    case = CaseRuns(last.suite, last.variant, "ok" if ok else last.status, None if ok else last.error)
    for r in ok:
        disturbed = None
        if number(r.metrics.get("artifacts_digest")):
            case.artifacts.add(int(r.metrics["artifacts_digest"]))
        if r.metrics.get("contended") is True:
            disturbed = f"{r.run_id}: {contention(r.metrics) or 'flagged contended in its timed window'}"
            case.contended.append(disturbed)
        for m, kind in r.nonfinite.items():
            case.nonfinite[m] = "nan" if "nan" in (kind, case.nonfinite.get(m)) else kind
        for m in dict.fromkeys([*r.metrics, *r.samples]):
            s = [float(x) for x in r.samples.get(m, ()) if number(x)]
            if s:
                case.samples.setdefault(m, []).append(s)
                case.samples_disturbed.setdefault(m, []).append(disturbed)
                case.runs.setdefault(m, []).append(float(np.median(s)))
            elif number(r.metrics.get(m)):
                case.runs.setdefault(m, []).append(float(r.metrics[m]))
            else:
                continue
            case.disturbed.setdefault(m, []).append(disturbed)
    return case


def load(run_dirs) -> tuple[dict[str, CaseRuns], list[dict], list[str], list[tuple[str, str]]]:
    """(case_id -> CaseRuns, each run's run.json, each run's name, (name, why) of each damaged run) of the run
    directories of one side. A run is counted once (`distinct`: a run reached twice, a shard beside the merged run
    that holds it; a warning says which were left out); a run.json without finished_at is an unfinished run's."""
    dirs, metas = [], []
    for d in map(Path, run_dirs):
        meta = read_run_json(d)
        if meta is None and not (d / RECORDS_JSONL).exists():
            raise FileNotFoundError(f"{d} is not a run directory (no run.json or records.jsonl)")
        dirs.append(d)
        # a run.json that does not say it finished (no finished_at, or null) is an unfinished run's, as for history
        metas.append({} if meta is None else {**meta, "finished_at": meta.get("finished_at") or None})
    keep = distinct(dirs, metas)
    by_case: dict[str, list[Record]] = {}
    names, damaged = [], []
    for d, meta in ((dirs[i], metas[i]) for i in keep):
        names.append(meta.get("run_id") or d.name)
        scan = scan_records(d / RECORDS_JSONL)
        if (message := scan.warning(d / RECORDS_JSONL)) is not None:
            warnings.warn(message, stacklevel=2)
        if (why := damage(meta, scan, d / RECORDS_JSONL)) is not None:
            damaged.append((names[-1], why))
        for r in scan.records:  # a rerun case: its last record counts
            by_case.setdefault(r.case_id, []).append(r)
    return {c: merge(rs) for c, rs in by_case.items()}, [metas[i] for i in keep], names, damaged


def count_once(dirs: list[Path]) -> list[Path]:
    """The runs of `dirs` that count, each once (distinct, a warning naming each left out), their run.json read here;
    one that cannot be read is left for the reader that loads it to name."""
    metas = []
    for d in dirs:
        try:
            metas.append(read_run_json(d))
        except (CorruptRunJson, OSError):
            metas.append(None)
    return [dirs[i] for i in distinct(dirs, metas)]


def distinct(run_dirs: list[Path], metas: list[dict | None]) -> list[int]:
    """The positions of the runs to count, of run directories given together (one side of a comparison, the runs one
    `bench history add` adds, a report's), each with its run.json; a warning names each run left out. A run counts
    once: a run reached twice (its run_id again: a symlink, a copy) is left out after its first, and so is a run that
    a merged run among them lists under `merged_from` (bench.merge), whose records the merged run holds (a sweep
    folder with its shards and `merged/`), and a merged run whose shards a larger merged run among them holds as
    well. Without this each of their cases would count twice, as two runs of no spread. An import of runs (`bench
    import` of their export) holds their timings only: given with one of them, it is the import that is left out."""
    ids = [m.get("run_id") if isinstance(m, dict) and isinstance(m.get("run_id"), str) else None for m in metas]
    parts = [_merged_from(m) for m in metas]
    imported = [isinstance(m, dict) and bool(m.get("imported_from")) for m in metas]
    originals = {ids[i]: i for i in range(len(metas)) if ids[i] and not imported[i]}
    holder: dict[str, int] = {}  # run_id -> the position of the largest merged run that lists it (of merges of the
    # same shards, one finished, then the one with the most records, then the one whose shards finished last: a merge
    # made before a shard was resumed, or retried, is not it)

    def latest(i: int) -> str:  # when its shards last finished (a tie keeps the order given: sorted is stable)
        m = metas[i] if isinstance(metas[i], dict) else {}
        return max((str(e.get("finished_at")) for e in m.get("merged_from") or [] if isinstance(e, dict)
                    and e.get("finished_at")), default="")

    newest = {i: k for k, i in enumerate(sorted(range(len(metas)), key=latest, reverse=True))}

    def rank(i: int) -> tuple:
        m = metas[i] if isinstance(metas[i], dict) else {}
        recorded = m.get("recorded") if isinstance(m.get("recorded"), int) else 0
        return -len(parts[i]), not m.get("finished_at"), -recorded, newest[i]

    for i in sorted(range(len(metas)), key=rank):
        for rid in parts[i] if not imported[i] else ():
            holder.setdefault(rid, i)
    keep, notes, first = [], [], {}
    for i, d in enumerate(run_dirs):
        key = ids[i] or str(Path(d).resolve())
        given = sorted(r for r in parts[i] | {key} if r in originals and originals[r] != i) if imported[i] else []
        if given:
            others = len(parts[i] - set(given))
            notes.append(f"{d} is an import of run {', '.join(given)}, given with it: counted once, as the run itself "
                         f"(an import holds its timings only)" + (f"; the import's {others} other run(s) are left out "
                                                                   "with it" if others else ""))
            continue
        if key in first:
            notes.append(f"{d} is run {key} again (also {run_dirs[first[key]]}): counted once")
            continue
        into = holder.get(ids[i]) if ids[i] else None
        if into is None and parts[i]:  # a merged run whose every shard a larger merged run holds
            holders = sorted({holder[r] for r in parts[i] if r in holder})  # an import holds no run
            into = next((j for j in holders if j != i and parts[i] <= parts[j]), None)
        if into is not None and into != i:
            notes.append(f"{d} (run {ids[i]}) holds the same runs as {run_dirs[into]} (run {ids[into]}), a merge "
                         f"{'finished' if (metas[into] or {}).get('finished_at') else 'as large'} and with as many "
                         "records or more: counted once, as that one" if parts[i] and parts[i] == parts[into] else
                         f"{d} (run {ids[i]}) is merged into {run_dirs[into]} (run {ids[into]}), given with it: "
                         "counted once, as the merged run")
            continue
        first[key] = i
        keep.append(i)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return keep


def _merged_from(meta: dict | None) -> set[str]:
    """The run_ids of the runs a merged run's records come from (run.json `merged_from`, bench.merge)."""
    entries = meta.get("merged_from") if isinstance(meta, dict) else None
    return ({e["run_id"] for e in entries if isinstance(e, dict) and isinstance(e.get("run_id"), str)}
            if isinstance(entries, list) else set())


def damage(meta: dict, scan: Scan, path: Path | None = None) -> str | None:
    """Why a run's records.jsonl (at `path`, where given: its absence is named) no longer holds what the run recorded
    (a file cut short, emptied, damaged or removed since; its missing cases would read as removed), or None. The one
    rule for compare (a damaged run is named, and fails the gate as NEW) and history (which refuses it)."""
    recorded, n = meta.get("recorded"), len(scan.records)
    if not meta.get("finished_at"):  # unfinished (killed, say): said as such, a cut last line and all
        return None
    if path is not None and not n and not Path(path).exists() and recorded != 0:
        return (f"it has no {RECORDS_JSONL}, yet it finished with {recorded} records" if isinstance(recorded, int)
                else f"it has no {RECORDS_JSONL}, yet it finished")
    short = isinstance(recorded, int) and n < recorded  # it may have finished with none: an empty shard
    held = f"its records.jsonl holds {n} of the {recorded} records it finished with" if short else None
    if scan.corrupt:
        return f"{scan.corrupt} corrupt line{'s' * (scan.corrupt > 1)} in its records" + (f", and {held}" * short)
    if isinstance(recorded, int):  # (or a node that never held rank 0)
        return held
    return "its records.jsonl holds no record, yet the run finished" if not n else None


def reference_case(case_id: str, suites: dict) -> tuple[str, frozenset[str]] | None:
    """(the case that `case_id`'s ratios to the reference variant are taken against, the names of those ratios), or
    None where its suite, or the part it belongs to (its `part=` param), declares no reference. The reference case
    has the same params, the reference variant; the ratios are the scope's `relative` metrics (speedup_x,
    time_overhead_x). `suites`: run.json's `suites` (suite -> its declaration, parts with their own reference and
    relative). Used by history (a ratio's contention) and bench.verdicts.reference_disturbed."""
    suite, _, rest = case_id.partition("/")
    _, slash, params = rest.partition("/")
    info = suites.get(suite) if isinstance(suites, dict) else None
    if not slash or not isinstance(info, dict):
        return None
    part = re.search(r"(?:^|,)part=([^,]*)", params)
    scope = (info.get("parts") or {}).get(part.group(1), info) if part else info
    if not isinstance(scope, dict) or not scope.get("reference"):
        return None
    relative = frozenset(x.get("name") for x in scope.get("relative") or () if isinstance(x, dict))
    return f"{suite}/{scope['reference']}/{params}", relative


class SidesError(ValueError):
    """Two sides that cannot be compared as given (check_sides): bad input, not a fault of compare."""


def check_sides(base: tuple[list[dict], list], new: tuple[list[dict], list]) -> None:
    """SidesError where two sides (each: its runs' run.json and directories) cannot be compared as they are: a run
    on both sides (it would be its own baseline: one directory, or one run_id, or a shard and the merged run holding
    it), a side whose runs are of several sizes or device types
    (joined as repeats of one case, a smoke run's short timers would pass for a quick run's), or two sides of
    different sizes or device types (their cases would share few case_ids, or none, and their timings nothing)."""
    both = sorted({Path(d).resolve() for d in base[1]} & {Path(d).resolve() for d in new[1]})
    if both:
        raise SidesError(f"run {both[0]} is on both sides: BASE and NEW must be different runs")
    measured = [{r for m in metas for r in ({m.get("run_id")} | _merged_from(m)) if isinstance(r, str)}
                for metas in (base[0], new[0])]
    if both := sorted(measured[0] & measured[1]):  # a copy, an export imported again, a shard and its merged run
        raise SidesError(f"run {both[0]} is on both sides (a copy of it, an import of its export, or a merge holding "
                         "it): BASE and NEW must be different runs")
    for what, get in (("sizes", lambda m: m.get("size")),
                      ("devices", lambda m: str(m.get("device")).partition(":")[0] if m.get("device") else None)):
        sides = []
        for side, (metas, _) in (("BASE", base), ("NEW", new)):
            found = sorted({v for v in map(get, metas) if v})
            if len(found) > 1:
                raise SidesError(f"{side} holds runs of several {what} ({', '.join(found)}): a side is repeats of "
                                 "one kind of run; compare like with like")
            sides.append(found[0] if found else None)
        if None not in sides and sides[0] != sides[1]:  # another size times other shapes; another device, all else
            one = "size" if what == "sizes" else "device type"
            raise SidesError(f"BASE is {sides[0]} and NEW is {sides[1]}: compare runs of one {one}")


# Comparing the environments of two sets of runs (bench.compare): each field's value on each side, from run.json.
def _env(meta: dict) -> dict:
    return meta.get("env") or {}


def _gpu(key: str, scale: float = 1.0):
    def get(meta):
        vals = [g.get(key) for g in _env(meta).get("gpus") or []]
        vals = [round(v / scale) if scale != 1.0 and number(v) else v for v in vals if v is not None]
        return ", ".join(dict.fromkeys(map(str, vals))) or None
    return get


def _gpu_used(meta: dict) -> str | None:
    """Which of its machine's GPUs its device measured on (bench.env.measured_gpu, through CUDA_VISIBLE_DEVICES),
    where the machine has several: the other GPU rows name them all."""
    env = _env(meta)
    gpu = measured_gpu(meta.get("device"), env) if len(env.get("gpus") or []) > 1 else None
    return gpu_label(gpu) if gpu is not None else None


def _git(key: str):
    def get(meta):
        value = (meta.get("git") or _env(meta).get("git") or {}).get(key)
        return value[:12] if key == "sha" and isinstance(value, str) else value
    return get


# (field, getter, part of the identity that env_id hashes). Clocks, power limit, git state, device and size are
# shown for whoever investigates a shift but do not make two environments different.
ENV_FIELDS = (
    ("gpu", _gpu("name"), True),
    ("gpu_count", lambda m: len(_env(m).get("gpus") or []), True),
    ("gpu_used", _gpu_used, False),
    ("driver", _gpu("driver_version"), True),
    ("compute_capability", _gpu("compute_capability"), True),
    ("gpu_memory_gib", _gpu("memory_total_bytes", 2**30), True),
    ("sm_clock_mhz", _gpu("sm_clock_mhz"), False),
    ("max_sm_clock_mhz", _gpu("max_sm_clock_mhz"), False),
    ("power_limit_w", _gpu("power_limit_w"), False),
    ("torch", lambda m: _env(m).get("torch"), True),
    ("cuda", lambda m: _env(m).get("torch_cuda"), True),
    ("cudnn", lambda m: _env(m).get("cudnn"), True),
    ("triton", lambda m: _env(m).get("triton"), True),
    ("python", lambda m: _env(m).get("python_version"), True),
    ("cpu", lambda m: _env(m).get("cpu_model"), True),
    ("cpu_cores", lambda m: _env(m).get("cpu_logical_cores"), True),
    ("packages", lambda m: ", ".join(f"{k} {v}" for k, v in sorted((_env(m).get("packages") or {}).items())) or None,
     False),
    ("git_sha", _git("sha"), False),
    ("git_dirty", _git("dirty"), False),
    ("device", lambda m: m.get("device"), False),
    ("size", lambda m: m.get("size"), False),
    # settings of the run that move timings on one machine: shown, so an A/B of them is not read as one of code
    ("cpus", lambda m: ",".join(map(str, m["cpus"])) if isinstance(m.get("cpus"), list) else None, False),
    ("threads", lambda m: ", ".join(f"{s}={info.get('threads')}" for s, info in sorted((m.get("suites") or {}).items())
                                    if isinstance(info, dict) and info.get("threads") is not None) or None, False),
    # what bench was started with: taskset's CPUs, torch's default thread count, OMP_NUM_THREADS and the like
    ("cpu_affinity", lambda m: _env(m).get("cpu_affinity"), False),
    ("cpu_quota", lambda m: _env(m).get("cpu_quota"), False),  # the cgroup's CPU limit (a container's --cpus)
    ("torch_threads", lambda m: _env(m).get("torch_threads"), False),
    ("env_vars", lambda m: ", ".join(f"{k}={v}" for k, v in sorted((_env(m).get("env_vars") or {}).items())) or None,
     False),
)
# fields a run of an older techbench did not record: such a side says nothing about them, so no difference is shown
RECENT_FIELDS = ("packages", "cpu_affinity", "cpu_quota", "torch_threads", "env_vars")


def _libraries(meta: dict) -> dict[str, str]:
    """library -> version of the libraries that the run's variants measure, from the labels its suites declare
    ("transformers 4.57.1"; a variant of two, "transformers 5.23.0, flash-attn 2.8.3", names both)."""
    labels = {one for info in (meta.get("suites") or {}).values()
              if isinstance(info, dict) and isinstance(info.get("libraries"), dict)
              for label in info["libraries"].values() if isinstance(label, str) for one in label.split(", ")}
    return dict(sorted(label.partition(" ")[::2] for label in labels))


def _library_field(base: list[dict], new: list[dict]) -> tuple[str, str | None, str | None]:
    """The versions of the libraries that variants on both sides measure (transformers, diffusers, torchao,
    liger-kernel): an upgrade moves their variants' numbers with the code under test unchanged. A library that one
    side's suites do not measure is left out: another selection of suites is not an upgrade."""
    sides = [[_libraries(m) for m in metas] for metas in (base, new)]
    names = set.intersection(*(set(lib) for libs in sides for lib in libs)) if all(sides) else set()

    def text(libs):
        return " | ".join(dict.fromkeys(", ".join(f"{n} {lib[n]}".strip() for n in sorted(names)) for lib in libs))

    return ("libraries", *(text(libs) or None for libs in sides))


def _machines(meta: dict) -> list[dict]:
    """The run.json of each machine, or GPU of one, that a run's records were measured on (bench.machines): a merged
    run's shards (those of one machine share an env_id, each on its own GPU), a run's resumes on another machine or
    GPU, each with its env and device; else the run's own."""
    found = measured_by(meta)
    if len(found) < 2:
        return [meta]
    return [{**meta, "env_id": m["env_id"], "env": m["env"], "device": m["device"]} for m in found]


def _side(metas: list[dict], get) -> str | None:
    vals = list(dict.fromkeys("-" if v is None else str(v) for v in map(get, metas)))
    return None if vals in ([], ["-"]) else " | ".join(vals)


def _measured_model(meta: dict) -> str | None:
    """The model of the GPU its device measured on (bench.env.measured_gpu), or None (a CPU run): env_id groups the
    GPUs of one machine, and an H200 and an H100 of one box are no A/B of code."""
    gpu = measured_gpu(meta.get("device"), _env(meta))
    return None if gpu is None else str(gpu.get("name") or "?")


def environments(base: list[dict], new: list[dict]) -> tuple[list, list, bool]:
    """(every ENV_FIELDS field as (name, base, new), those that differ, whether both sides are one environment) for
    the run.json dicts of two sides: the same env_ids, or without them the same identity fields, and the same models
    of GPU measured on (of one machine, GPU 0 and GPU 1 alike are one environment; an H200 and an H100 are not). A
    merge of shards that ran on several machines (run.json `envs`) or GPUs stands for each of them."""
    base, new = ([m2 for m in metas for m2 in _machines(m)] for metas in (base, new))
    fields = [(name, _side(base, get), _side(new, get)) for name, get, _ in ENV_FIELDS]
    fields.append(_library_field(base, new))
    # a side of runs from before a field was recorded (packages) says nothing about it: no difference to show
    old = {name for name in RECENT_FIELDS if not all(name in _env(m) for m in base + new)}
    differ = [f for f in fields if f[1] != f[2] and f[0] not in old]
    ids = [{(m.get("env_id"), _measured_model(m)) for m in metas} for metas in (base, new)]
    if None in {i for i, _ in ids[0] | ids[1]}:  # a run without env_id: fall back to the identity fields
        identity = {name for name, _, ident in ENV_FIELDS if ident}
        models = [{g for _, g in side} for side in ids]
        return fields, differ, not any(f in identity for f, _, _ in differ) and models[0] == models[1]
    return fields, differ, ids[0] == ids[1]
