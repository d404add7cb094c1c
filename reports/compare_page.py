"""The `bench compare -o FILE.html` page: environment diff, ratio heatmap, base-vs-new bars per timing, tables."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

from bench.atomic import atomic_write_text
from bench.compare import (
    IMPROVEMENT,
    NEW_CONTENDED,
    NEW_DISTURBED,
    NOT_SIGNIFICANT,
    NOTHING_SHARED,
    ONE_RUN_CAVEAT,
    ONE_RUN_UNGATED,
    REGRESSION,
    TOO_FEW,
    count_timings,
    plain_records,
    too_few_lines,
)
from bench.metrics import ARTIFACTS, digest_hex
from reports.html import figure, number, page, section, table

# Red (worse) -> white (no change) -> green (better), the colours the tables use for regressions and improvements.
DIVERGING = [[0.0, "#cf222e"], [0.5, "#f6f8fa"], [1.0, "#1a7f37"]]
VERDICT_COLOURS = {"slower": "#cf222e", "faster": "#1a7f37", "same": "#8c959f", "noisy": "#d4a72c",
                   "contended": "#8250df", TOO_FEW: "#bc4c00"}
# Verdicts that judged a change. Any other cell (n/a, changed, too few, or a metric without a direction: a timing's IQR
# once read x1351 and drew deep red) is grey rather than on the better/worse scale.
JUDGED = ("faster", "slower", "better", "worse", "same", "noisy")
NEUTRAL = "#d0d7de"
# Colour range of the heatmap in |log2 ratio|: at least x1.1 so that sub-threshold changes stay pale, at most x4 so
# that one huge change does not wash out the rest.
MIN_SPAN, MAX_SPAN = math.log2(1.1), 2.0
# Labels stay horizontal where they fit (rotated case_ids took ~200 px and are hard to read): case_ids go on a y axis
# that grows its margin to fit them, metric names are broken after underscores into lines of at most this many
# characters.
METRIC_LINE_CHARS = 10
# Past this many metric columns those lines overlap on a 1280 px page beside case_ids of CASE_LABEL_CHARS (12: 1 px
# apart; a compare of mtp and moe has 51): each name is written whole, upright, in a top margin grown to fit it.
UPRIGHT_OVER = 12
# A case_id longer than this is shortened on an axis (its hover names it whole): mtp's 170 characters took all but
# ~110 px of the heatmap's width and left its columns a sliver each.
CASE_LABEL_CHARS = 70
BAR_PX = 22  # per bar: base and new side by side for each case


def _wrap(name: str, width: int = METRIC_LINE_CHARS) -> str:
    """`name` broken after underscores into lines of at most `width` characters where it can be (plotly's <br>)."""
    lines = [""]
    for part in re.split(r"(?<=_)", name):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "<br>".join(lines)


def _labels(case_ids: list[str], width: int = CASE_LABEL_CHARS) -> list[str]:
    """Axis labels of `case_ids`: one longer than `width` leaves out the params that every case of its suite on the
    axis shares ("…" in their place: mtp's three cases differ by variant alone), then has its middle cut to "…"."""
    split = [c.split("/", 2) for c in case_ids]
    sets: dict[str, list[set]] = {}
    for p in split:
        sets.setdefault(p[0], []).append(set(p[-1].split(",")) if len(p) == 3 else set())
    shared = {suite: set.intersection(*s) if len(s) > 1 else set() for suite, s in sets.items()}
    out, head = [], (width - 1) // 2
    for c, p in zip(case_ids, split):
        if len(c) > width and len(p) == 3 and shared[p[0]]:
            c = "/".join([*p[:2], ",".join([kv for kv in p[2].split(",") if kv not in shared[p[0]]] + ["…"])])
        out.append(c if len(c) <= width else f"{c[:head]}…{c[len(c) - (width - 1 - head):]}")
    return out


def _why(r) -> str:
    return f"<br>contended: {html.escape(r.contended)}" if isinstance(r.contended, str) else ""


def _goodness(ratio: float, direction: str | None) -> float:
    """log2(NEW/BASE) signed so that positive is better by the metric's direction."""
    if direction is None or not ratio or not math.isfinite(ratio) or ratio <= 0:
        return math.nan
    return math.log2(ratio) * (1 if direction == "higher" else -1)


def _digests_in_hex(records: list[dict]) -> list[dict]:
    """Table rows with each artifacts_digest's sides in hex, as the run report and the history show it, and no ratio:
    a digest is an identity, which a ratio of 1 (and thousands grouping) would pass off as a quantity unchanged."""
    return [{**r, "base": digest_hex(r["base"]), "new": digest_hex(r["new"]), "ratio": None}
            if r["metric"] == ARTIFACTS.name else r for r in records]


def heatmap(rows):
    """Cases (rows) by metrics (columns), coloured by how much better or worse NEW is than BASE where a verdict
    judged the change; grey where none did."""
    import plotly.graph_objects as go

    cases = list(dict.fromkeys(rows["case_id"]))
    metrics = sorted(dict.fromkeys(rows["metric"]))
    z, grey = ([[math.nan] * len(metrics) for _ in cases] for _ in range(2))
    text, grey_text, hover = ([[""] * len(metrics) for _ in cases] for _ in range(3))
    for r in rows.itertuples():
        i, j = cases.index(r.case_id), metrics.index(r.metric)
        digest = r.metric == ARTIFACTS.name  # an identity: its ratio would read "1.00" for other trained weights
        label = "" if math.isnan(r.ratio) or digest else f"{r.ratio:.2f}"
        has_direction = isinstance(r.direction, str)
        judged = r.verdict in JUDGED and has_direction
        if judged:
            # only a verdict of change takes a colour: "same" sits at no change, "noisy" at the neutral grey
            change = r.verdict in ("faster", "slower", "better", "worse")
            z[i][j] = _goodness(r.ratio, r.direction) if change else 0.0 if r.verdict == "same" else math.nan
            if r.verdict == "noisy":
                grey[i][j], grey_text[i][j] = 0.0, label
            else:
                text[i][j] = label
        else:
            grey[i][j], grey_text[i][j] = 0.0, label
        better = f"{r.direction} is better" if has_direction else "no direction"
        hover[i][j] = (f"{html.escape(r.case_id)}<br>{r.metric} ({better})<br>"
                       + (f"base {digest_hex(r.base) or '-'} → new {digest_hex(r.new) or '-'}<br>" if digest else
                          f"base {number(r.base)} → new {number(r.new)}<br>ratio {r.ratio:.4g}<br>")
                       + f"verdict: {r.verdict}, "
                       f"runs {r.runs_per_side}" + _why(r)
                       + ("" if judged else "<br>grey: no verdict on this change"))
    finite = [abs(v) for row in z for v in row if math.isfinite(v)]
    span = min(max([MIN_SPAN, *finite]), MAX_SPAN)
    ticks = [-span, -span / 2, 0.0, span / 2, span]
    labels = [f"x{2 ** abs(t):.2f} {'better' if t > 0 else 'worse'}" if t else "no change" for t in ticks]
    common = {"x": metrics, "y": cases, "texttemplate": "%{text}", "hovertext": hover,
              "hovertemplate": "%{hovertext}<extra></extra>"}
    fig = go.Figure([
        go.Heatmap(z=grey, text=grey_text, colorscale=[[0, NEUTRAL], [1, NEUTRAL]], showscale=False, **common),
        go.Heatmap(z=z, text=text, colorscale=DIVERGING, zmid=0, zmin=-span, zmax=span, **common,
                   colorbar={"title": {"text": "NEW/BASE"}, "tickvals": ticks, "ticktext": labels}),
    ])
    upright = len(metrics) > UPRIGHT_OVER
    names = metrics if upright else [_wrap(m) for m in metrics]
    top = 7 * max(map(len, metrics)) if upright else 14 * max(n.count("<br>") + 1 for n in names)  # px of labels
    fig.update_layout(title={"text": "Ratio NEW/BASE by case and metric (green better, red worse, by the metric's "
                                     "direction; grey: no verdict)",
                             "y": 1, "yanchor": "top", "pad": {"t": 20}},  # above the labels, not amid them
                      height=200 + top + 26 * len(cases), margin={"l": 20, "r": 20, "t": 90 + top},
                      yaxis={"autorange": "reversed", "automargin": True, "tickangle": 0, "tickvals": cases,
                             "ticktext": _labels(cases)},
                      xaxis={"side": "top", "tickangle": -90 if upright else 0, "tickfont": {"size": 11},
                             "tickvals": metrics, "ticktext": names}, template="plotly_white")
    return fig


def timing_bars(rows, suite: str, metric: str):
    """Base vs new per case for one tested metric of one suite; the new bar carries the verdict and the
    confidence interval of the ratio (where one exists), scaled to the base median."""
    import plotly.graph_objects as go

    part = rows[(rows["suite"] == suite) & (rows["metric"] == metric)]
    y = [c.removeprefix(f"{suite}/") for c in part["case_id"]]
    low = [b * lo for b, lo in zip(part["base"], part["ci_low"])]
    high = [b * hi for b, hi in zip(part["base"], part["ci_high"])]
    why = [_why(r) for r in part.itertuples()]
    fig = go.Figure([
        go.Bar(name="base", y=y, x=list(part["base"]), orientation="h", marker_color="#8c959f",
               hovertemplate="%{y}<br>base %{x:.4g}<extra></extra>"),
        go.Bar(name="new", y=y, x=list(part["new"]), orientation="h", text=list(part["verdict"]),
               textposition="outside", cliponaxis=False,
               marker_color=[VERDICT_COLOURS.get(v, "#0969da") for v in part["verdict"]],
               error_x={"type": "data", "symmetric": False, "array": [h - n for h, n in zip(high, part["new"])],
                        "arrayminus": [n - lo for lo, n in zip(low, part["new"])]},
               customdata=list(zip(part["ratio"], part["p_value"], part["ci_low"], part["ci_high"],
                                   part["runs_per_side"], why)),
               hovertemplate="%{y}<br>new %{x:.4g}<br>ratio %{customdata[0]:.3f} (CI %{customdata[2]:.3f}.."
                             "%{customdata[3]:.3f})<br>p=%{customdata[1]:.2g}<br>runs %{customdata[4]}"
                             "%{customdata[5]}<extra></extra>"),
    ])
    fig.update_layout(title=f"{suite}: {metric}, base vs new (error bar: CI of the ratio)", barmode="group",
                      xaxis_title=metric, template="plotly_white", height=160 + 2 * BAR_PX * len(y),
                      yaxis={"autorange": "reversed", "automargin": True, "tickangle": 0, "tickvals": y,
                             "ticktext": [c.removeprefix(f"{suite}/") for c in _labels(list(part["case_id"]))]})
    return fig


ROW_TABLE = ["case_id", "metric", "base", "new", "ratio", "verdict", "p_value", "ci_low", "ci_high", "runs_per_side",
             "samples_per_side", "min_p", "run_spread", "contended", "varies", "follows"]  # contended: why, or which
# runs a verdict was judged without; follows: the measured metric a derived row (a rate, % of peak) moved with;
# min_p: the smallest p the within-run test could give with samples_per_side
VARIES_TABLE = ["case_id", "metric", "base", "new", "ratio", "verdict", "runs_per_side", "run_spread", "varies"]
CONTENDED_TABLE = ["case_id", "metric", "base", "new", "ratio", "verdict", "masked", "runs_per_side", "contended"]
STATUS_TABLE = ["case_id", "base_status", "new_status", "change", "reason"]


def write_compare_html(comparison, out: str | Path) -> Path:
    """One self-contained page for a `Comparison`; returns the path written (OutputError, `out` as it was, when it
    cannot be written)."""
    c = comparison
    rows = c.rows
    k = len(c.env_diff)
    verdict = (f"<p><b>{html.escape(c.env_verdict[0].upper() + c.env_verdict[1:])}</b>: "
               f"{k} environment field{' differs' if k == 1 else 's differ'}.</p>")
    env_rows = [{"field": f, "base": b, "new": n, "differs": "differs" if b != n else ""} for f, b, n in c.env_fields
                if b not in (None, "") or n not in (None, "")]  # a CPU run has no GPU rows to show
    parts = [section("Environment", verdict, table(env_rows, ["field", "base", "new", "differs"],
                                                  {"differs": "regression"}))]

    if c.one_run_per_side:
        parts.append(f'<p class="regression">{html.escape(ONE_RUN_CAVEAT[0].upper() + ONE_RUN_CAVEAT[1:])}.</p>')
    if c.unfinished:
        runs = ", ".join(f"{side} run {run}" for side, run in c.unfinished)
        parts.append(f'<p class="regression">Unfinished: {html.escape(runs)}. Not every case ran; a case missing from '
                     "a run is not judged, and --fail-on-regression fails on an unfinished new run.</p>")
    for side, run, why in c.damaged:
        parts.append(f'<p class="regression">Damaged: {html.escape(f"{side} run {run}: {why}")}. Its missing cases are '
                     "not judged, and --fail-on-regression fails on a damaged new run.</p>")
    if c.new_contended and not c.allow_contended:  # the gate's notes, as the text summary says them
        said = NEW_CONTENDED.format(c.new_contended, c.timings) + (NEW_DISTURBED if c.new_disturbed else "")
        parts.append(f'<p class="regression">{html.escape(said[0].upper() + said[1:])}.</p>')
    if c.nothing_shared:
        parts.append(f'<p class="regression">{html.escape(NOTHING_SHARED[0].upper() + NOTHING_SHARED[1:])}.</p>')
    for said in too_few_lines(rows, c.threshold, c.alpha):  # a row that moved x9 is not to pass for noise
        parts.append(f'<p class="regression">{html.escape(said[0].upper() + said[1:])}.</p>')
    failing = c.newly_failing
    if len(c.regressions) or len(failing):
        tables = []
        if len(c.regressions):
            tables.append(table(plain_records(c.regressions, ROW_TABLE), ROW_TABLE, {"verdict": "regression"}))
        if n := len(c.one_run_regressions):
            tables.append(f'<p class="muted">{html.escape(ONE_RUN_UNGATED.format(n))}.</p>')
        if len(c.not_significant):
            said = NOT_SIGNIFICANT.format(count_timings(c.not_significant), c.family, c.alpha)
            tables.append(f'<p class="muted">{html.escape(said[0].upper() + said[1:])}.</p>')
        if len(failing):
            tables += [section(f"Newly failing ({len(failing)}): ok in BASE, oom, timeout or error in NEW",
                               table(plain_records(failing, STATUS_TABLE), STATUS_TABLE,
                                     {"base_status": "status", "new_status": "status"}), level=3)]
        parts.append(section(f"Regressions ({len(c.regressions) + len(failing)})", *tables))
    else:
        parts.append(section("Regressions", '<p class="improvement">None: no timing slower beyond the threshold '
                                            "with significance, no deterministic metric worse, no case newly "
                                            "failing.</p>"))
    if len(rows):
        parts.append(section("Ratios", figure(heatmap(rows))))
        tested = c.tested
        bars = [figure(timing_bars(tested, s, m)) for s, m in dict.fromkeys(zip(tested["suite"], tested["metric"]))]
        if bars:
            parts.append(section("Timings", *bars))
    else:
        parts.append(section("Ratios", '<p class="muted">No case is ok on both sides: nothing to compare.</p>'))
    if len(c.contended):
        note = ("Judged all the same (--allow-contended)." if c.allow_contended else
                "Not judged faster or slower: rerun on a quiet machine, or pass --allow-contended to judge them. "
                f"--fail-on-regression fails on the {len(c.unjudged_slower)} that its test called slower from several "
                "runs a side (column masked): a disturbed run cannot show that nothing regressed.")
        parts.append(section(f"Contended ({c.count(c.contended)}): other load disturbed these timings",
                             f'<p class="muted">{note}</p>',
                             table(plain_records(c.contended, CONTENDED_TABLE), CONTENDED_TABLE,
                                   {"contended": "reason"})))
    varying = c.varying[~c.varying["verdict"].isin(REGRESSION + IMPROVEMENT)]  # the others have their section
    if len(varying):
        parts.append(section(f"Varying ({len(varying)}): exact metrics whose runs differ, or whose weights do",
                             '<p class="muted">Declared deterministic (bytes, FLOPs, a seeded quality), yet not on '
                             "this machine (weighed on their run-to-run spread, with no threshold), or from other "
                             "trained weights on each side (held to the threshold).</p>",
                             table(plain_records(varying, VARIES_TABLE), VARIES_TABLE, {"varies": "reason"})))
    if len(c.improvements):
        parts.append(section(f"Improvements ({len(c.improvements)})",
                             table(plain_records(c.improvements, ROW_TABLE), ROW_TABLE, {"verdict": "improvement"})))
    if len(c.status_rows):
        cols = list(c.status_rows.columns)
        parts.append(section("Cases not ok or on one side only",
                             table(plain_records(c.status_rows, cols), cols, {"base_status": "status",
                                                                        "new_status": "status"})))
    if c.one_side:  # a metric one side lacks is no comparison, and no silence either
        listed = [{"case_id": case, "metric": m, "only on": side} for case, m, side in c.one_side]
        parts.append(section(f"Metrics on one side only ({len(listed)}): not compared",
                             '<p class="muted">Null or not recorded on the other side: a ratio whose reference case '
                             "that run lacks, telemetry absent there, a metric of another techbench version.</p>",
                             table(listed, ["case_id", "metric", "only on"])))
    if c.nonfinite:  # a metric gone NaN has no ratio to draw: listed, and `worse` ones fail the gate
        listed = [{"case_id": x["case_id"], "metric": x["metric"], "verdict": "worse" if x["worse"] else "changed",
                   "base": x["value"] if x["side"] == "base" else number(x["other"]),
                   "new": x["value"] if x["side"] == "new" else number(x["other"])} for x in c.nonfinite]
        parts.append(section(f"NaN or infinite on one side ({len(listed)})",
                             '<p class="muted">Measured NaN or infinite on one side (the records\' nonfinite) and '
                             "finite on the other; --fail-on-regression fails on those NEW went NaN, or infinite the "
                             "wrong way for the metric's direction.</p>",
                             table(listed, ["case_id", "metric", "verdict", "base", "new"])))
    if len(rows):
        parts.append(section("All comparisons", table(_digests_in_hex(plain_records(rows, ROW_TABLE)), ROW_TABLE)))
    subtitle = (f"base {', '.join(c.base_runs)} vs new {', '.join(c.new_runs)}; timings with several runs a side: "
                f"run medians against the run-to-run spread (Welch t-test from 3 runs a side); with one run a side: "
                f"Mann-Whitney U and bootstrap CI of the ratio of medians; alpha {c.alpha:g}, minimum effect "
                f"{c.threshold:.0%}")
    return atomic_write_text(out, page("techbench compare", "\n".join(parts), subtitle))
