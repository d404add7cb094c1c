"""The rule each metric of a case gets when two sides are compared (bench.compare): `judge` gives one row, `follows` and
reference_disturbed adjust the rows after.

Reads run values only (bench.sides.CaseRuns): no torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from bench.metrics import Metric, default, is_clocked, nonfinite_worse, of_weights, same_exact
from bench.sides import CaseRuns, load, reference_case
from bench.stats import MIN_SAMPLES, TOO_FEW, compare_runs, compare_samples, compare_spread, family_p

REGRESSION, IMPROVEMENT = ("slower", "worse"), ("faster", "better")

VARIES = "not deterministic here, weighed on its run-to-run spread"
RETRAINED = ("the sides read other cached artifacts (trained weights of another training): held to the threshold, "
             "and from two runs on a side to their spread, not exactly")
UNKNOWN_WEIGHTS = ("one side's runs recorded no artifacts digest (a techbench before it): which trained weights its "
                   "numbers came from is unknown, so held to the threshold, not exactly")


def _change_verdict(change: str, d: str | None, words: tuple[str, str] = ("slower", "faster")) -> str:
    if change in ("same", "noisy", TOO_FEW):
        return change
    if d is None:
        return "changed"
    return words[0] if (change == "up") == (d == "lower") else words[1]


def _varies(base: list[float], new: list[float]) -> str | None:
    """Which side's runs disagree on a metric, and over what range; None when every side's runs agree."""
    said = [f"{side} runs {_number_text(min(v))}..{_number_text(max(v))} ({len(v)} runs)"
            for side, v in (("base", base), ("new", new)) if not same_exact(min(v), max(v))]
    return "; ".join(said) or None


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def judge(metric: str, b: CaseRuns, n: CaseRuns, threshold: float, alpha: float, specs: dict[str, Metric],
             allow_contended: bool = False) -> dict:
    """One row's numbers and verdict. base/new are the medians over each side's runs, those its test compared
    where it has a test (for runs against runs the medians on the log scale, `_numbers`): ratio is new / base. Which
    rule decides:

    - the metric has samples, or is clock-derived with a direction, and a side has >= 2 runs: `compare_runs` on
      the run values (faster/slower/same/noisy; p_value and CI from the Welch test on log run values).
    - samples and exactly one run per side: `compare_samples` on the two runs' samples, which cannot see the
      run-to-run term (runs_per_side "1v1"; `Comparison.summary_lines` says so). Where its rank test cannot reach
      alpha with the samples it has (3 a side: its smallest p is 0.1), "too few" (stats.TOO_FEW), not same or noisy;
      such a row carries samples_per_side ("3v3") and min_p, as every row of that test does (None and NaN else).
    - clocked without samples and one run a side, or info: n/a, only the ratio.
    - otherwise (bytes, FLOPs, quality): exact, same/better/worse (changed without a direction).
    - exact, but the runs of a side disagree: `compare_spread` on the run values (their spread, no threshold),
      better/worse/same/noisy, and `varies` says which side's runs differ and how (None for every other row).
    - exact and changed, but the sides read other cached artifacts (artifacts_digest: weights of another training):
      held to the threshold (`compare_runs` from two runs on a side, else the medians' change), `varies` saying so
      (RETRAINED); so is one whose other side recorded no digest (UNKNOWN_WEIGHTS: runs of a techbench before it).
    runs_per_side is "<base runs>v<new runs>" for this metric; run_spread is compare_runs' spread, else NaN.
    A tested verdict of a case contended on either side is "contended" (kept under `allow_contended`), and
    `contended` names the runs and why; None otherwise. `specs` are the suite's declared metrics (default() for the
    undeclared). A tested row also carries, for bench.compare and not as a column, its `test` (the SampleTest its
    numbers come from) and `new_disturbed` (every NEW run of the metric contended)."""
    spec = specs.get(metric) or default(metric)
    d, clocked = spec.direction, is_clocked(metric, specs)
    rb, rn = b.runs[metric], n.runs[metric]
    base, new = b.value(metric), n.value(metric)
    sampled = metric in b.samples or metric in n.samples
    row = {"base": base, "new": new, "direction": d, "p_value": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "runs_per_side": f"{len(rb)}v{len(rn)}", "samples_per_side": None, "min_p": math.nan,
           "run_spread": math.nan, "contended": None, "varies": None, "masked": None}
    timed = spec.kind != "info" and (sampled or (clocked and d is not None))
    t = _test(metric, b, n, timed, sampled, threshold, alpha)
    if t is not None:
        row.update(_numbers(t), test=t, new_disturbed=all(n.disturbed[metric]))
        verdict = "n/a" if math.isnan(t.ratio) else _change_verdict(t.change, d)
        why = _disturbed_runs(b.contended, n.contended)
        if why and verdict != "n/a":
            row["contended"] = why
            row["masked"], verdict = (None, verdict) if allow_contended else (verdict, "contended")
            clean_b, clean_n = b.undisturbed(metric), n.undisturbed(metric)
            left_out = _disturbed_runs(filter(None, b.disturbed[metric]), filter(None, n.disturbed[metric]))
            if not allow_contended and metric in clean_b.runs and metric in clean_n.runs and \
                    max(len(clean_b.runs[metric]), len(clean_n.runs[metric])) >= 2:
                # undisturbed runs left on both sides, enough to weigh the run-to-run spread: judged on those
                # alone, so that one disturbed run (a night in the baseline, say) neither hides a regression nor
                # makes one. Never down to one run a side, whose within-run test cannot see that spread
                u = _test(metric, clean_b, clean_n, timed, sampled, threshold, alpha)
                if u is not None and not math.isnan(u.ratio):
                    row.update(base=clean_b.value(metric), new=clean_n.value(metric), test=u, new_disturbed=False,
                               runs_per_side=f"{len(clean_b.runs[metric])}v{len(clean_n.runs[metric])}",
                               contended=f"{JUDGED_UNDISTURBED}; left out: {left_out or why}", masked=None)
                    row.update(_numbers(u))
                    verdict = _change_verdict(u.change, d)
        return {**row, "verdict": verdict}
    row["ratio"] = new / base if base else (1.0 if new == base else math.nan)
    varies = _varies(rb, rn)
    if clocked or sampled or spec.kind == "info":
        verdict = "n/a"
    elif (b.artifacts or n.artifacts) and not b.artifacts & n.artifacts and of_weights(spec) and (
            varies or not same_exact(new, base)):
        # other trained weights, other numbers: held to the threshold (and the runs' spread) rather than exactly; a
        # count of bytes the weights' values do not move is the same all the same. A side with no digest at all
        # (its runs predate artifacts_digest) may have read any weights: the same rule
        row["varies"] = RETRAINED if b.artifacts and n.artifacts else UNKNOWN_WEIGHTS
        t = _test(metric, b, n, True, False, threshold, alpha) if min(rb + rn) > 0 else None
        if t is not None and not math.isnan(t.ratio):
            row.update(_numbers(t))
            change = t.change
        elif new == base:
            change = "same"
        else:  # one run a side (or values <= 0): the medians against the threshold
            gap = (new - base) / abs(base) if base else math.copysign(math.inf, new - base)
            change = "same" if abs(gap) <= threshold else "up" if gap > 0 else "down"
        verdict = _change_verdict(change, d, ("worse", "better"))
    elif varies:  # declared exact, yet its runs differ here: weighed on that spread, on the values' own scale
        t = compare_spread(rb, rn, alpha)
        row.update(p_value=t.p_value, run_spread=t.spread, varies=varies)
        verdict = "same" if same_exact(new, base) else _change_verdict(t.change, d, ("worse", "better"))
    elif same_exact(new, base):
        verdict = "same"
    elif d is None:
        verdict = "changed"
    else:
        verdict = "better" if (new < base) == (d == "lower") else "worse"
    return {**row, "verdict": verdict}


JUDGED_UNDISTURBED = "judged on the undisturbed runs"


def _numbers(t) -> dict:
    """A test's numbers for its row. base and new are the centres its ratio is the quotient of (SampleTest.base/new:
    for runs against runs the median on the log scale, whose even-count middle is a geometric mean), so that a row
    never reads 10 -> 10 x1.25; where a test has none (NaN), the row keeps the arithmetic medians over runs."""
    out = {"ratio": t.ratio, "p_value": t.p_value, "ci_low": t.ci_low, "ci_high": t.ci_high, "run_spread": t.spread,
           "min_p": t.min_p, "samples_per_side": f"{t.sizes[0]}v{t.sizes[1]}" if t.sizes else None}
    if math.isfinite(t.base) and math.isfinite(t.new):
        out.update(base=t.base, new=t.new)
    return out


def _disturbed_runs(base, new) -> str:
    """The contended runs of each side ("<run_id>: <reason>"), named in one line."""
    return "; ".join([*(f"base run {w}" for w in base), *(f"new run {w}" for w in new)])


def _test(metric: str, b: CaseRuns, n: CaseRuns, timed: bool, sampled: bool, threshold: float, alpha: float):
    """The test `_verdict` applies to a timed metric over these runs: compare_runs with >= 2 runs on a side,
    compare_samples with one run a side and samples enough; None otherwise."""
    rb, rn = b.runs[metric], n.runs[metric]
    if timed and max(len(rb), len(rn)) >= 2:
        return compare_runs(rb, rn, threshold, alpha)
    if timed and sampled and len(rb) == len(rn) == 1:
        sb, sn = b.samples.get(metric, [[]])[0], n.samples.get(metric, [[]])[0]
        if len(sb) >= MIN_SAMPLES and len(sn) >= MIN_SAMPLES:
            return compare_samples(sb, sn, threshold, alpha)
    return None


def follows(rows: list[dict], specs: dict[str, dict[str, Metric]]) -> None:
    """Set each row's `follows`: for a derived metric (a rate, TFLOP/s, % of peak: bench.metrics `inputs`) that
    moved the same way as a metric it is computed from in the same case (both regressions, or both improvements;
    for a contended row, by the verdict its test gave, `masked`), the measured metric at the root of that chain;
    None otherwise. A slower step is then one regression with its rates beside it, not four."""
    def way(r):
        v = r["masked"] if r["verdict"] == "contended" and r.get("masked") else r["verdict"]
        return REGRESSION if v in REGRESSION else IMPROVEMENT if v in IMPROVEMENT else None

    side = {(r["case_id"], r["metric"]): way(r) for r in rows}
    parent = {}
    for r in rows:
        spec, key = specs.get(r["suite"], {}).get(r["metric"]), (r["case_id"], r["metric"])
        if side[key] and spec is not None and spec.kind == "derived":
            moved = [(r["case_id"], i) for i in spec.inputs if side.get((r["case_id"], i)) == side[key]]
            # one input moved that way: it explains the row; two (a ratio of two timings that both slowed) do not say
            # which one did, nor whether a numerator's move raised it or lowered it
            parent[key] = moved[0] if len(moved) == 1 else None
    for r in rows:
        key, seen = (r["case_id"], r["metric"]), set()
        while parent.get(key) and key not in seen:  # to the root: % of peak <- TFLOP/s <- the step's time
            seen.add(key)
            key = parent[key]
        r["follows"] = key[1] if key[1] != r["metric"] else None


@dataclass
class Side:
    """One side of a comparison for reference_disturbed: its cases over all its runs, and `per_run()`, each run's
    cases on their own, in the order the side joined them (read again on demand: only a ratio whose reference was
    contended needs them)."""

    cases: dict[str, CaseRuns]
    per_run: Callable[[], list[dict[str, CaseRuns]]]


def _with_reference(case: CaseRuns, case_id: str, metric: str, ref: str, per_run) -> CaseRuns | None:
    """`case`'s runs of `metric` with each run also disturbed where, in that run, its reference case was contended
    (the ratio was taken against that run's reference); None where the runs do not line up with `case`'s."""
    runs, disturbed, samples, samples_disturbed = [], [], [], []
    for cases in per_run:
        c, rc = cases.get(case_id), cases.get(ref)
        if c is None or metric not in c.runs:
            continue
        why = None
        if rc is not None and rc.contended:
            run, _, reason = rc.contended[0].partition(": ")
            why = f"{run}: in its reference case {ref.split('/')[1]}, {reason}"
        runs += c.runs[metric]
        disturbed += [w or why for w in c.disturbed[metric]]
        samples += c.samples.get(metric, [])
        samples_disturbed += [w or why for w in c.samples_disturbed.get(metric, [])]
    if runs != case.runs[metric]:
        return None
    return CaseRuns(case.suite, case.variant, case.status, case.error, {metric: runs},
                    {metric: samples} if samples else {}, list(dict.fromkeys(w for w in disturbed if w)),
                    {metric: disturbed}, {metric: samples_disturbed} if samples else {}, set(case.artifacts))


def reference_disturbed(rows: list[dict], sides: tuple[Side, Side], suites: dict[str, dict],
                        specs: dict[str, dict[str, Metric]], threshold: float, alpha: float,
                        allow_contended: bool = False) -> None:
    """A ratio to the reference variant (a `relative` metric: speedup_x, time_overhead_x) of a clock comes from the
    reference case's timing of the same run too: a run where that case was contended is a disturbed run of the
    ratio, as one where its own case was. The row is judged again (`judge`) with those runs marked: on the runs
    where neither was contended where both sides have enough of them (the load that slowed a reference and
    inflated its ratios is then in no run judged), else "contended" with the test over every run `masked`; its
    `contended` names each run left out and why. `suites`: each suite's run.json declaration (reference, parts,
    relative)."""
    for r in rows:
        found = reference_case(r["case_id"], suites)
        if (found is None or r["metric"] not in found[1] or r["verdict"] == "n/a" or found[0] == r["case_id"]
                or not is_clocked(r["metric"], specs.get(r["suite"], {}))):
            continue
        ref = found[0]
        if not any(ref in side.cases and side.cases[ref].contended for side in sides):
            continue
        again = [_with_reference(side.cases[r["case_id"]], r["case_id"], r["metric"], ref, side.per_run())
                 if ref in side.cases and side.cases[ref].contended else side.cases[r["case_id"]] for side in sides]
        if None not in again:
            r.update(judge(r["metric"], *again, threshold, alpha, specs.get(r["suite"], {}), allow_contended))
        elif not allow_contended and r["verdict"] != "contended":  # runs that do not line up: the whole row
            b, n = (side.cases.get(ref) for side in sides)
            why = _disturbed_runs(b.contended if b else (), n.contended if n else ())
            r.update(masked=r["verdict"], verdict="contended", contended=f"its reference case {ref}: {why}")


def consequences(rows: list[dict], specs: dict[str, dict[str, Metric]], suites: dict[str, dict]) -> set[int]:
    """The positions of tested rows (those with a `test`) that are no test of their own: a derived metric (a rate,
    TFLOP/s, % of peak) computed from a metric of its own case that is tested too moves with it, and counts under
    it. A ratio to the reference variant is a test of its own: it weighs its case against another."""
    tested = {(r["case_id"], r["metric"]) for r in rows if r.get("test") is not None}
    out = set()
    for i, r in enumerate(rows):
        spec = specs.get(r["suite"], {}).get(r["metric"])
        if r.get("test") is None or spec is None or spec.kind != "derived":
            continue
        found = reference_case(r["case_id"], suites)
        if (found is None or r["metric"] not in found[1]) and any((r["case_id"], m) in tested for m in spec.inputs):
            out.add(i)
    return out


def per_run(dirs: list, names: list[str]):
    """Each run of a side on its own (case_id -> CaseRuns), in the order `load` joined them, read on the first call
    (Side): `load` of one directory at a time, keeping the runs the side counted (`names`) once."""
    done: list = []

    def runs() -> list[dict]:
        if not done:
            seen: set[str] = set()
            with warnings.catch_warnings():  # said once already, when the side was read
                warnings.simplefilter("ignore")
                for d in dirs:
                    cases, _, (name,), _ = load([d])
                    if name in names and name not in seen:
                        seen.add(name)
                        done.append(cases)
        return done

    return runs


def gate(rows: list[dict], specs: dict, suites: dict) -> tuple[int, int, int, set[int]]:
    """Set each row's gate_p; returns (the timings in the gate's family, NEW's contended timings, NEW's timings, the
    positions of the tested rows that are rates of a timing rather than timings: `consequences`).

    The family: the timings judged from several runs a side (compare_runs) with a direction, one per test: a rate,
    TFLOP/s or % of peak of a timing of its own case is its consequence, not another test (`consequences`). gate_p
    is the Holm-adjusted one-sided p that NEW is worse (bench.stats.family_p, spreads moderated across the family);
    a consequence that follows a timing (`follows`) takes that timing's. Timings, for the count of NEW's contended
    ones: every tested row but the consequences; contended in NEW: every NEW run of it disturbed."""
    skip = consequences(rows, specs, suites)
    family = [i for i, r in enumerate(rows) if i not in skip and r.get("test") is not None and r["direction"]
              and r["varies"] is None and math.isfinite(r["test"].df) and math.isfinite(r["test"].diff)]
    tests = [rows[i]["test"] for i in family]
    p = family_p([t.diff * (1 if rows[i]["direction"] == "lower" else -1) for i, t in zip(family, tests)],
                 [t.spread for t in tests], [t.df for t in tests], [t.scale for t in tests]) if family else []
    for r in rows:
        r["gate_p"] = math.nan
    for i, q in zip(family, p):
        rows[i]["gate_p"] = float(q)
    root = {(rows[i]["case_id"], rows[i]["metric"]): rows[i]["gate_p"] for i in family}
    for i in skip:
        if rows[i]["follows"]:
            rows[i]["gate_p"] = root.get((rows[i]["case_id"], rows[i]["follows"]), math.nan)
    timings = [r for i, r in enumerate(rows) if i not in skip and r.get("test") is not None and r["varies"] is None]
    return len(family), sum(bool(r.get("new_disturbed")) for r in timings), len(timings), skip


UNSAMPLED = ("moved the wrong way beyond the threshold, not judged ({}: measured metrics without raw samples, one "
             "run a side; import pytest-benchmark files saved with --benchmark-save-data, or compare several runs a "
             "side): ")


def unsampled_moved(rows, tested, threshold: float, shown: int = 5) -> list[str]:
    """A line naming the rows with no verdict ("n/a": a timing without raw samples, one run a side) whose ratio moved
    the wrong way beyond the threshold, or none: such a row is not judged, but a 2x slower one is not to pass unsaid.
    Rows of a case with a `tested` timing (its rates, energy, ratios to the reference) go with that timing."""
    r = rows[(rows["verdict"] == "n/a") & rows["direction"].isin(["lower", "higher"])
             & ~rows["case_id"].isin(tested["case_id"])]
    moved = r[r["ratio"].where(r["direction"] == "lower", 1 / r["ratio"]) - 1 > threshold]
    if not len(moved):
        return []
    named = "; ".join(f"{x.case_id} {x.metric} x{x.ratio:.3f}" for x in moved.head(shown).itertuples())
    return [UNSAMPLED.format(len(moved)) + named + " ..." * (len(moved) > shown)]


def nonfinite_changes(case_id: str, b: CaseRuns, n: CaseRuns, specs: dict[str, Metric]) -> list[dict]:
    """The metrics of a case ok on both sides that one side measured NaN or infinite (the records' `nonfinite`) and
    the other finite: each with the side, what it was, the other side's value, and `worse` where NEW went NaN, or
    infinite the wrong way for its direction (a loss +inf; an SQNR of +inf is an exact result, better), which
    --fail-on-regression fails on as on a case newly failing. NaN or infinite on both sides is no change."""
    out = []
    for side, there, other in (("new", n, b), ("base", b, n)):
        for metric, kind in sorted(there.nonfinite.items()):
            if metric in other.nonfinite or metric not in other.runs:
                continue
            direction = (specs.get(metric) or default(metric)).direction
            worse = side == "new" and nonfinite_worse(kind, direction)
            out.append({"case_id": case_id, "metric": metric, "side": side, "value": kind,
                        "other": other.value(metric), "worse": worse})
    return out
