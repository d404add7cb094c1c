"""The sentences `bench compare` says about a comparison (bench.compare.Comparison.summary_lines), each with the
rule it states, and the helpers that word its rows."""

from __future__ import annotations

import math
from collections import Counter

from bench.stats import RUN_SPREAD_K, TOO_FEW
from bench.verdicts import IMPROVEMENT, REGRESSION, RETRAINED, UNKNOWN_WEIGHTS, VARIES, unsampled_moved

ONE_RUN_CAVEAT = ("one run per side: run-to-run variation is not measured, so a faster/slower can be a run-level "
                  "offset; rerun both sides (bench run --out BASE/r1, BASE/r2, BASE/r3, and NEW/r1, ...) and compare "
                  "the folders of runs for a verdict that accounts for it")
ONE_RUN_CAVEAT_IMPORTED = ("one run per side: run-to-run variation is not measured, so a faster/slower can be a "
                           "run-level offset; rerun both sides (pytest --benchmark-json=BASE-1.json, then bench import "
                           "BASE-1.json --out BASE/r1, the same for r2, r3 and NEW/r1, ...) and compare the folders of "
                           "runs for a verdict that accounts for it")
CONTENDED_HEAD = ("contended ({}): other load disturbed these timings, so they are not judged (--fail-on-regression "
                  "fails on those its test called slower from several runs a side, significant over the timings "
                  "judged; --allow-contended judges them):")
UNJUDGED_SLOWER = ("of them, {} looked slower from several runs a side: --fail-on-regression fails on them, since a "
                   "disturbed run cannot show that nothing regressed; rerun on a quiet machine (bench doctor), or "
                   "pass --allow-contended")
NOT_SIGNIFICANT = ("slower, but not significant over the timings judged: {}; --fail-on-regression does not fail on "
                   "them (Holm over the {} timings judged from several runs a side, family-wise alpha {:g}, their "
                   "run-to-run spreads moderated across them: bench.stats.family_p)")
ONE_RUN_GATE = ("one run a side: --fail-on-regression judges the exact metrics (bytes, FLOPs, quality) only; a "
                "timing is shown, not gated")
NEW_CONTENDED = "{} of NEW's {} timings were contended in every new run, so not judged"
# what "n/a" counts on the summary's line of other metrics (bench.verdicts: info metrics, and clocked ones not tested)
NOT_JUDGED = (" (n/a: not judged: context such as the host's load, or a percentile or rate of a timing with no samples "
              "of its own; its timing's row is the verdict)")
NEW_DISTURBED = (": NEW was disturbed, and --fail-on-regression fails on it as on an unfinished run (it measured the "
                 "load, not the code); rerun it on a quiet machine (bench doctor), or pass --allow-contended")
NOTHING_SHARED = ("nothing compared: no case of NEW is in BASE (no shared case_id: other suites, sizes or params); "
                  "--fail-on-regression fails")
CONTENDED_ALLOWED = "contended ({}), judged all the same (--allow-contended):"
ONE_RUN_UNGATED = ("slower timings from one run a side ({}): --fail-on-regression does not fail on them (one run "
                   "cannot tell a change from a run-level offset); rerun both sides, 3 runs each, for a verdict that "
                   "gates")
VARIES_HEAD = ("varying ({}): exact metrics (bytes, FLOPs, a seeded quality) whose runs of one side differ, weighed "
               "on their run-to-run spread, or that come from other trained weights on each side, held to the "
               "threshold:")
ONE_SIDE = ("metrics on one side only, not compared ({}): {} (null or not recorded on the other side: a ratio whose "
            "reference case that run lacks, telemetry absent there, a metric of another techbench version)")
TOO_FEW_LINE = ("too few samples for the within-run test at alpha {:g} ({}) in {}: not judged (neither same nor "
                "noisy: the test could not decide) and not gated; rerun both sides, 3 runs each, and compare the "
                "folders of runs, whose medians are weighed against their run-to-run spread")
TOO_FEW_MOVED = "; beyond the threshold all the same ({}): {}"


def too_few_lines(rows, threshold: float, alpha: float, shown: int = 5) -> list[str]:
    """The line on the timings whose within-run test could not reach alpha (verdict "too few"): their sample counts
    and the smallest p those allow, and, by name, those that moved beyond the threshold either way (a x9 slower
    step is not to read as noise); none when there are none."""
    few = rows[rows["verdict"] == TOO_FEW]
    if not len(few):
        return []
    sizes = "; ".join(f"{k} samples: its smallest p is {_span(p.min(), p.max())}"
                      for k, p in few.groupby("samples_per_side")["min_p"])
    moved = beyond(few, threshold)
    named = "; ".join(f"{r.case_id} {r.metric} x{r.ratio:.3f}" for r in moved.head(shown).itertuples())
    return [TOO_FEW_LINE.format(alpha, sizes, count_timings(few))
            + (TOO_FEW_MOVED.format(len(moved), named + " ..." * (len(moved) > shown)) if len(moved) else "")]


def too_few_json(rows, threshold: float, alpha: float) -> dict:
    """`too_few_lines` for scripts: how many timings had too few samples, the line said of them (None when none did),
    and those of them beyond the threshold (case_id, metric, ratio, samples_per_side, min_p)."""
    few = rows[rows["verdict"] == TOO_FEW]
    moved = beyond(few, threshold)
    return {"timings": len(few), "said": next(iter(too_few_lines(rows, threshold, alpha)), None),
            "moved": plain_records(moved, ["case_id", "metric", "ratio", "samples_per_side", "min_p"])}


def beyond(rows, threshold: float):
    """The rows whose ratio lies beyond the threshold band [1/(1+threshold), 1+threshold], either way."""
    return rows[(rows["ratio"] > 1 + threshold) | (rows["ratio"] < 1 / (1 + threshold))]


def _span(low: float, high: float) -> str:
    return f"{low:.2g}" if f"{low:.2g}" == f"{high:.2g}" else f"{low:.2g}..{high:.2g}"


def plain_records(frame, columns=None) -> list[dict]:
    """The rows of a frame as dicts of plain values, NaN and +-inf (a CI without an end) as None (JSON, HTML
    tables); `columns` picks and orders."""
    columns = list(frame.columns) if columns is None else columns
    return [{c: (None if isinstance(v, float) and not math.isfinite(v) else v) for c, v in zip(columns, row)}
            for row in frame[columns].astype(object).itertuples(index=False)]


def count_timings(rows) -> str:
    """How many timings `rows` are, a rate listed with the timing it follows counted under it: "5 timings (14 rows
    with their rates)", or "1 timing"."""
    listed = set(zip(rows["case_id"], rows["metric"]))
    roots = sum(not isinstance(f, str) or (case, f) not in listed for case, f in zip(rows["case_id"], rows["follows"]))
    return f"{roots} timing{'s' * (roots != 1)}" + f" ({len(rows)} rows with their rates)" * (len(rows) > roots)


def row_line(r) -> str:
    """One row of the summary: verdict, case, metric, base -> new, ratio, p and CI, runs a side."""
    stats = "" if math.isnan(r.p_value) else f"  p={r.p_value:.2g}" + (
        f" (its smallest possible at {r.samples_per_side} samples: {r.min_p:.2g})" if TOO_FEW in (r.verdict, r.masked)
        else "") + ("" if math.isnan(r.ci_low) else f"  CI {r.ci_low:.3f}..{r.ci_high:.3f}")
    ratio = "" if math.isnan(r.ratio) else f"  x{r.ratio:.3f}"
    spread = "" if math.isnan(r.run_spread) else f", run spread {r.run_spread:.1%}"
    runs = f"  runs {r.runs_per_side}{spread}"
    values = f"{r.base:.4g} -> {r.new:.4g}"
    if r.verdict in ("worse", "better", "changed") and float(r.base).is_integer() and float(r.new).is_integer():
        values = f"{int(r.base)} -> {int(r.new)} ({int(r.new) - int(r.base):+d})"  # exact: 4 digits can hide 1 byte
    return f"  {r.verdict:<9} {r.case_id}  {r.metric}  {values}{ratio}{stats}{runs}"


def summary_lines(c) -> list[str]:
    """Comparison.summary_lines: the lines `bench compare` prints of comparison `c`."""
    lines = [f"base {', '.join(c.base_runs)}  vs  new {', '.join(c.new_runs)}",
             f"environment: {c.env_verdict}"]
    lines += [f"  {f}: {b} -> {n}" for f, b, n in c.env_diff]
    tested, timing = (c.rows.index.isin(r.index) for r in (c.tested, c.timing_rows))
    verdict = c.rows["verdict"]
    for label, verdicts in (("timings", verdict[timing]), ("rates of those timings", verdict[tested & ~timing]),
                            ("other metrics", verdict[~tested]), ("cases", c.status_rows["change"])):
        if len(verdicts):
            lines.append(f"{label}: " + ", ".join(f"{c} {v}" for v, c in sorted(Counter(verdicts).items()))
                         + (NOT_JUDGED if label == "other metrics" and (verdicts == "n/a").any() else ""))
    if len(c.timing_rows):
        per_side = Counter(c.timing_rows["runs_per_side"])
        lines.append("timings by runs per side (base v new): "
                     + ", ".join(f"{k} ({c})" for k, c in sorted(per_side.items())))
    if c.one_run_per_side:
        lines.append(ONE_RUN_CAVEAT_IMPORTED if c.imported else ONE_RUN_CAVEAT)
    if n := len(c.one_run_regressions):
        lines.append(ONE_RUN_UNGATED.format(n))
    if c.one_run_per_side and not c.family:
        lines.append(ONE_RUN_GATE)
    if c.new_contended and not c.allow_contended:
        lines.append(NEW_CONTENDED.format(c.new_contended, c.timings)
                     + (NEW_DISTURBED if c.new_disturbed else ""))
    if c.nothing_shared:
        lines.append(NOTHING_SHARED)
    if c.one_side:
        shown = "; ".join(f"{m} of {c} ({side} only)" for c, m, side in c.one_side[:3])
        lines.append(ONE_SIDE.format(len(c.one_side), shown + ("; ..." if len(c.one_side) > 3 else "")))
    lines += too_few_lines(c.rows, c.threshold, c.alpha)
    lines += unsampled_moved(c.rows, c.tested, c.threshold)
    lines += [f"damaged: {side} run {run}: {why} (its missing cases are not judged; --fail-on-regression fails "
              "on a damaged new run)" for side, run, why in c.damaged]
    if c.unfinished:
        lines.append("unfinished: " + ", ".join(f"{side} run {run}" for side, run in c.unfinished)
                     + " (not every case ran: a case missing from a run is not judged; --fail-on-regression fails "
                     "on an unfinished new run)")
    lines.append(f"(threshold {c.threshold:.0%}, alpha {c.alpha:g}; several runs a side: a change must also "
                 f"exceed {RUN_SPREAD_K:g}x the run-to-run spread" + (
                     f"; the gate: significant over the {c.family} timings judged from several runs a side, "
                     f"family-wise alpha {c.alpha:g}" * bool(c.family)) + ")")
    for title, part in (("regressions", c.regressions), ("improvements", c.improvements)):
        if len(part):
            derived = part["follows"].notna()
            lines.append(f"{title} ({len(part)}" + (f"; {derived.sum()} derived from another listed" * any(derived))
                         + "):")
            for r in part[~derived].itertuples():
                lines.append(row_line(r))
                same = part[(part["case_id"] == r.case_id) & (part["follows"] == r.metric)]
                if len(same):
                    lines.append("    with it: " + ", ".join(f"{m} x{x:.3f}" for m, x in zip(same["metric"],
                                                                                      same["ratio"])))
                if isinstance(r.contended, str):  # judged on the undisturbed runs: which were left out
                    lines.append(f"    {r.contended}")
                if r.Index in c.not_significant.index:
                    lines.append("    not gated: " + (f"p={r.gate_p:.2g} over the {c.family} timings judged"
                                                     if r.gate_p == r.gate_p else "no test of its own"))
                if isinstance(r.varies, str):
                    lines.append(f"    {r.varies}" if r.varies in (RETRAINED, UNKNOWN_WEIGHTS)
                                 else f"    {VARIES}: {r.varies}")
    if len(c.contended):
        head = CONTENDED_ALLOWED if c.allow_contended else CONTENDED_HEAD
        lines.append(head.format(c.count(c.contended)))
        for r in c.contended.itertuples():
            lines += [row_line(r), f"    {r.contended}" + (f" (the test said {r.masked})" if r.masked else "")]
        if len(c.unjudged_slower):
            lines.append(UNJUDGED_SLOWER.format(count_timings(c.unjudged_slower)))
    if len(c.not_significant):
        lines.append(NOT_SIGNIFICANT.format(count_timings(c.not_significant), c.family, c.alpha))
    varying = c.varying[~c.varying["verdict"].isin(REGRESSION + IMPROVEMENT)]  # those not listed above
    if len(varying):
        lines.append(VARIES_HEAD.format(len(varying)))
        for r in varying.itertuples():
            lines += [row_line(r), f"    {r.varies}"]
    lines += nonfinite_lines(c.nonfinite)
    if len(c.newly_failing):
        lines.append(f"newly failing ({len(c.newly_failing)}):")
        lines += [f"  {r.change:<11} {r.case_id}" for r in c.newly_failing.itertuples()]
    return lines


NONFINITE_HEAD = ("NaN or infinite on one side ({}): measured so there and finite on the other (the records' "
                  "nonfinite); --fail-on-regression fails on those NEW went NaN, or infinite the wrong way ({}):")


def nonfinite_lines(changes: list[dict]) -> list[str]:
    """The metrics measured NaN or infinite on one side only (bench.verdicts.nonfinite_changes), one line each."""
    if not changes:
        return []
    lines = [NONFINITE_HEAD.format(len(changes), sum(x["worse"] for x in changes))]
    for x in changes:
        new, base = (x["value"], f"{x['other']:.4g}") if x["side"] == "new" else (f"{x['other']:.4g}", x["value"])
        lines.append(f"  {'worse' if x['worse'] else 'changed':<11} {x['case_id']}  {x['metric']}  {base} -> {new}")
    return lines
