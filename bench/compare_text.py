"""The sentences `bench compare` says about a comparison (bench.compare.Comparison.summary_lines), each with the
rule it states, and the helpers that word its rows."""

from __future__ import annotations

import math

from bench.stats import TOO_FEW

ONE_RUN_CAVEAT = ("one run per side: run-to-run variation is not measured, so a faster/slower can be a run-level "
                  "offset; rerun both sides (bench run --out BASE/r1, BASE/r2, BASE/r3, and NEW/r1, ...) and compare "
                  "the folders of runs for a verdict that accounts for it")
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
