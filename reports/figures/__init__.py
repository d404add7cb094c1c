"""Per-suite figure modules and the helpers they share.

A suite adds `reports/figures/<suite>.py` with `figures(frame) -> list[plotly Figure]` (and optionally `METRICS`, the
columns of its results table); nothing else changes. `frame` holds that suite's records from `load_frame`: one row per
record with its metrics as columns, plus `run` (a label naming the machine), `size` and `command` (the exact
`bench run` line that reproduces the case). Failed, OOM and skipped cases are rows too: figures draw them with
`add_not_ok` rather than drop them, and an ok case without a panel's metric as well, through `lacking`.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from bench.case_ids import case_id, nodes_of_run, reproduce_command
from bench.metrics import default
from bench.records import STATUSES, path_text, read_run_json, records_frame

NOT_OK = tuple(s for s in STATUSES if s != "ok")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
RUN_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "star", "pentagon", "hexagon", "cross")
# Margins of a figure with reference lines labelled at its right (label_lines), and the height a label takes there:
# two lines of 11 px text and air.
MARGIN, LABEL_PX = {"t": 100, "b": 80, "r": 220}, 32
# add_not_ok's status for an ok case that lacks the panel's metric (`lacking`): drawn with the failed cases, its reason
# beside it, rather than left out of the panel unsaid
NO_VALUE = "ok, no value"
NONFINITE_TEXT = {"nan": "NaN", "inf": "inf", "-inf": "-inf"}  # a record's nonfinite, as a table prints it
STATUS_COLORS = {"oom": "#9a6700", "timeout": "#cf222e", "error": "#cf222e", "skipped": "#6e7781", NO_VALUE: "#6e7781"}
# A symbol per status, named in the legend: stacked or close cases leave no room for a text label beside each.
STATUS_SYMBOLS = {"oom": "diamond-x", "timeout": "hourglass", "error": "x", "skipped": "circle-x-open",
                  NO_VALUE: "circle-open"}
# The columns `hover` puts in customdata, in this order: hovertemplates refer to them as %{customdata[i]}.
HOVER_COLUMNS = ("case_id", "run", "command")
NO_X = "not measured"  # add_not_ok's category, on a category axis, for a case with none of its own


def figure_module(suite: str):
    """reports.figures.<suite>, or None when the suite has no figure module."""
    if not suite.isidentifier() or suite.startswith("_"):  # _specs is not a suite's module
        return None
    name = f"{__name__}.{suite}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise  # a figure module that exists but cannot import is a bug to show, not a missing module


def figures_for(suite: str, frame: pd.DataFrame) -> list:
    """The suite's figures from its figure module; without one, from the metrics its run declared
    (reports.figures._specs); [] without records of the suite."""
    rows = frame[frame["suite"] == suite] if "suite" in frame else frame.iloc[0:0]
    if rows.empty:
        return []
    module = figure_module(suite)
    if module is None:
        from reports.figures import _specs

        figs = _specs.figures(suite, rows.reset_index(drop=True))
    else:
        figs = list(module.figures(rows.reset_index(drop=True)))
    mark_libraries(figs, declared(rows, suite).get("libraries") or {})
    return figs


def mark_libraries(figs: list, libraries: dict[str, str]) -> None:
    """Traces of a variant that runs a third-party library (run.json "libraries": variant -> "name version") get a
    star marker, a dotted line and the library in their name, so that ours, the library's and the reference read
    apart at a glance in every figure, whichever module drew it. A trace is the variant's when named after it, or
    when its legend group is the variant (detection's "variant · head · resolution", a second run's "variant (run)")."""
    for fig in figs if libraries else ():
        for trace in fig.data:
            name = getattr(trace, "name", None)
            variant = name if name in libraries else getattr(trace, "legendgroup", None)
            if variant not in libraries:
                continue
            trace.name = f"{name} · {libraries[variant]}"
            if hasattr(trace, "marker") and getattr(trace, "type", "") in ("scatter", "scattergl"):
                trace.marker.symbol = "star"
            if hasattr(trace, "line") and getattr(trace, "type", "") in ("scatter", "scattergl"):
                trace.line.dash = "dot"
            if getattr(trace, "type", "") == "bar":
                trace.marker.pattern.shape = "/"


def run_label(meta: dict | None, run_dir: str | Path) -> str:
    """What tells runs apart in a legend: the GPU model (with a count when several), else the CPU."""
    env = (meta or {}).get("env") or {}
    names = [g.get("name") or "GPU" for g in env.get("gpus") or []]
    if names:
        return " + ".join(f"{names.count(n)}x {n}" if names.count(n) > 1 else n for n in dict.fromkeys(names))
    return f"CPU {env['cpu_model']}" if env.get("cpu_model") else path_text(Path(run_dir).name)


def run_labels(run_dirs) -> dict[str, str]:
    """run_dir -> label; runs that would read the same get their size, else their run_id, else their directory."""
    metas = {str(d): read_run_json(d) or {} for d in run_dirs}
    labels = {d: run_label(m, d) for d, m in metas.items()}
    for key in ("size", "run_id", "directory"):
        seen = list(labels.values())
        extra = {d: metas[d].get(key) or path_text(d) for d in labels}
        if len(set(seen)) == len(seen) or len({(labels[d], extra[d]) for d in labels}) < len(labels):
            continue
        labels = {d: f"{label} ({extra[d]})" if seen.count(label) > 1 else label for d, label in labels.items()}
    return labels


def _reference(meta: dict, suite: str, part: str | None, frame: pd.DataFrame, parts: list) -> str | None:
    """The reference variant of a suite, or of one of its parts, as its run declared it (run.json "suites"). A run of
    an older techbench did not declare it: then the variant of the first record of the suite (and part), since the
    runner runs each group's reference first. `parts` is each row's part."""
    info = (meta.get("suites") or {}).get(suite) or {}
    declared = ((info.get("parts") or {}).get(part) or {}).get("reference") or info.get("reference")
    if declared:
        return declared
    same = (frame["suite"] == suite).to_numpy() & np.array([p == part for p in parts], dtype=bool)
    variants = frame.loc[same, "variant"]
    return str(variants.iloc[0]) if len(variants) else None


def load_frame(run_dirs) -> pd.DataFrame:
    """records_frame of every run with raw samples, plus the run label, the run's size, its suites' reference
    variants (column "reference") and each case's reproduce command."""
    labels, parts = run_labels(run_dirs), []
    for run_dir in run_dirs:
        frame = records_frame(run_dir, samples=True)
        if frame.empty:
            continue
        meta = read_run_json(run_dir) or {}
        frame["run"] = labels[str(run_dir)]
        envs = meta.get("envs") or {}
        if len(envs) > 1:  # shards run on several machines, merged (bench merge): each record names its machine
            frame["run"] = [run_label({"env": envs.get(e)}, run_dir) for e in frame["env_id"]]
        frame["size"] = meta.get("size") or "quick"
        of_part = [p.get("part") if isinstance(p, dict) else None for p in frame["params"]]
        keys = list(zip(frame["suite"], of_part, strict=True))
        refs = {key: _reference(meta, *key, frame, of_part) for key in set(keys)}
        frame["reference"] = [refs[key] for key in keys]
        devices = [meta.get("device") or d for d in frame["device"]]
        ids = set(frame["case_id"])  # a reference case the run has: not every grid point has one (samplers' tol)
        refs = [r if isinstance(r, str) and case_id(s, r, p) in ids else None
                for s, p, r in zip(frame["suite"], frame["params"], frame["reference"])]
        nodes = nodes_of_run(meta)
        frame["command"] = [reproduce_command(s, v, p, size, d, ref, nodes) for s, v, p, size, d, ref in
                            zip(frame["suite"], frame["variant"], frame["params"], frame["size"], devices, refs)]
        parts.append(frame)
    # copied: a concat of runs with different metric columns is one block a column, which every insert warns of
    return pd.concat(parts, ignore_index=True).copy() if parts else pd.DataFrame(columns=["suite", "status", "run"])


def ok(frame: pd.DataFrame, *metrics: str) -> pd.DataFrame:
    """Rows with status ok and every named metric present."""
    rows = frame[frame["status"] == "ok"]
    for m in metrics:
        rows = rows[rows[m].notna()] if m in rows else rows.iloc[0:0]
    return rows


@functools.cache
def _declared(run_dir: str) -> dict:
    try:
        return (read_run_json(Path(run_dir)) or {}).get("suites") or {}
    except ValueError:
        return {}


def declared(rows: pd.DataFrame, suite: str) -> dict:
    """The suite's declaration (run.json "suites") in the runs of `rows`: the last run that has one."""
    info: dict = {}
    for run_dir in dict.fromkeys(rows.get("run_dir", pd.Series(dtype=str))):
        info = _declared(str(run_dir)).get(suite) or info
    return info


def unit(rows: pd.DataFrame, metric: str) -> str:
    """The unit the runs of `rows` declared for `metric`; for a run that declared none, the unit-suffix default."""
    suite = str(rows["suite"].iloc[0]) if len(rows) and "suite" in rows else ""
    spec = (declared(rows, suite).get("metrics") or {}).get(metric) or {}
    return spec.get("unit") or default(metric).unit


def axis(rows: pd.DataFrame, metric: str, text: str) -> str:
    """An axis title: `text` and the metric's declared unit, e.g. "GEMM throughput (TFLOP/s)"."""
    u = unit(rows, metric)
    return f"{text} ({u})" if u else text


def hover(rows: pd.DataFrame) -> list[list[str]]:
    """customdata for a trace: HOVER_COLUMNS per point."""
    return rows[list(HOVER_COLUMNS)].astype(str).values.tolist()


def hovertemplate(x: str, y: str) -> str:
    """Hover text: case_id, run, the point's values, then the command that reproduces it."""
    return (f"<b>%{{customdata[0]}}</b><br>%{{customdata[1]}}<br>{x}: %{{x:.4g}}<br>{y}: %{{y:.4g}}"
            f"<br><span style='font-family:monospace'>%{{customdata[2]}}</span><extra>%{{fullData.name}}</extra>")


def colors(variants) -> dict[str, str]:
    """A fixed color per variant, in order of first appearance, so every figure of a suite agrees."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(dict.fromkeys(variants))}


def run_symbols(frame: pd.DataFrame) -> dict[str, str]:
    return {r: RUN_SYMBOLS[i % len(RUN_SYMBOLS)] for i, r in enumerate(dict.fromkeys(frame["run"]))}


def add_run_legend(fig, frame: pd.DataFrame) -> None:
    """One grey legend entry per run showing its marker symbol (only when there are several runs)."""
    symbols = run_symbols(frame)
    if len(symbols) > 1:
        for run, symbol in symbols.items():
            fig.add_scatter(x=[None], y=[None], mode="markers", name=run, legendgroup=f"run:{run}",
                            marker={"symbol": symbol, "color": "#57606a", "size": 9})


def params_label(params: dict, keys=None) -> str:
    keys = sorted(params) if keys is None else keys
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params)


def wrap_label(label: str, per_line: int = 3) -> str:
    """A params label over several lines (plotly titles break at <br>) so that panel titles never collide."""
    parts = label.split(", ")
    return "<br>".join(", ".join(parts[i:i + per_line]) for i in range(0, len(parts), per_line))


def params_groups(frame: pd.DataFrame, defaults: dict | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per distinct params dict; the label names only the params that vary between groups, and one a
    group lacks by what the suite declared a point without it runs (run.json "param_defaults"), else "(default)"."""
    keys = frame["params"].map(lambda p: tuple(sorted(p.items(), key=lambda kv: kv[0])))
    groups = list(dict.fromkeys(keys))
    varying = sorted({k for g in groups for k, v in g if len({dict(h).get(k) for h in groups}) > 1})

    def label(params: dict) -> str:
        if not varying:
            return params_label(params)
        return ", ".join(f"{k}={params.get(k, (defaults or {}).get(k, '(default)'))}" for k in varying)

    return [(label(dict(g)), frame[[k == g for k in keys]]) for g in groups]


def bytes_unit(values) -> tuple[float, str]:
    """(divisor, unit) that keeps byte counts readable: GiB, MiB or KiB."""
    top = max((float(v) for v in values if pd.notna(v)), default=0.0)
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if top >= 1024 ** power:
            return 1024.0 ** power, unit
    return 1.0, "B"


def same_case(frame: pd.DataFrame, column: str):
    """For `add_not_ok`'s `x`: the value of `column` in an ok record of the same run and params (another variant of
    the same case), for an x that the params determine though no param holds it (rmpad's pad fraction)."""
    good = ok(frame, column)
    known = {(r, params_key(p)): v for r, p, v in zip(good["run"], good["params"], good[column], strict=True)}
    return lambda record: known.get((record["run"], params_key(record["params"])))


def params_key(params: dict) -> tuple:
    """A params dict as a key: the same case of another variant has the same one."""
    return tuple(sorted((k, str(v)) for k, v in params.items()))


def _shift(v: float, lo: float, hi: float, frac: float, log: bool) -> float:
    """`v` moved by `frac` of the span [lo, hi] (in decades on a log axis; a span of one decade when it is empty)."""
    if log:
        return v * ((hi / lo) if hi > lo > 0 else 10.0) ** frac
    return v + frac * ((hi - lo) or abs(hi) or 1.0)


def _drawn_y(fig, row, col) -> list[float]:
    """The y values of the traces already on the subplot at (row, col), or on the figure's one plot."""
    ref = "y" if row is None else fig.get_subplot(row, col).yaxis.plotly_name.replace("axis", "")
    on = [t.y for t in fig.data if (getattr(t, "yaxis", None) or "y") == ref and getattr(t, "y", None) is not None]
    return [float(v) for y in on for v in y if isinstance(v, numbers.Real) and math.isfinite(v)]


def _x_of(value) -> float | str | None:
    """A case's x for `add_not_ok`: a number, a category (text), or None where it has none."""
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return None if value is None else str(value)


def add_not_ok(fig, rows: pd.DataFrame, ok_x=(), ok_y=(), row=None, col=None, x=None, log_x=False,
               log_y=False) -> None:
    """Non-ok cases as markers of their status (STATUS_SYMBOLS), in a strip just above the ok points.

    A case sits at its own x where `x(record)` gives one (a param such as the expert count or world size, or what its
    params determine: `same_case`; on a category axis its category, such as a shape's name); a case without one (a
    failed case has no latency to plot) sits left of the data past a dotted divider, never at an x it did not have,
    or on a category axis in a category of its own (NO_X). Cases at one x stack. One legend entry per status across
    the figure; the hover gives the case_id, the reason's last line, and the command that reproduces it. `log_x`
    and `log_y` say which axes the caller draws on a log scale, so that offsets are taken in decades there.
    """
    rows = rows[rows["status"] != "ok"]
    if rows.empty:
        return
    own = [_x_of(x(r)) if x is not None else None for _, r in rows.iterrows()]
    known = [_x_of(v) for v in ok_x] + own
    xs = [v for v in known if isinstance(v, float)]
    categories = any(isinstance(v, str) for v in known)
    ys = [float(v) for v in ok_y if pd.notna(v)]
    drawn = ys + _drawn_y(fig, row, col)  # offsets in proportion to the axis, which other lines may stretch
    y_lo, y_hi = (min(drawn), max(drawn)) if ys else (0.0, 0.0)
    strip = _shift(max(ys), y_lo, y_hi, 0.12, log_y) if ys else 0.0
    step = 0.07  # of the y span per stacked marker: 11 px markers apart on a plot ~260 px high
    placed, stacked = [], {}
    for i, v in enumerate(own):
        if v is not None or (categories and not xs):
            where, v = ("at its x", v) if v is not None else ("no x", NO_X)
            k = stacked[v] = stacked.get(v, -1) + 1
            placed.append((v, _shift(strip, y_lo, y_hi, step * k, log_y) if ys else float(k), where))
        elif xs:
            k = stacked[None] = stacked.get(None, -1) + 1
            left = _shift(min(xs), min(xs), max(xs), -0.12, log_x)
            placed.append((left, _shift(strip, y_lo, y_hi, -step * k, log_y) if ys else -float(k), "no x"))
        else:  # no case here has an x: a row of markers with no scale to read
            placed.append((float(i), 0.0, "no x"))
    if xs and None in stacked:
        divider = _shift(min(xs), min(xs), max(xs), -0.06, log_x)
        fig.add_vline(x=divider, line={"dash": "dot", "color": "#afb8c1", "width": 1}, row=row, col=col)
    shown = {t.legendgroup for t in fig.data if t.showlegend is not False}
    rows = rows.assign(_x=[p[0] for p in placed], _y=[p[1] for p in placed], _where=[p[2] for p in placed])
    for (status, where), part in rows.groupby(["status", "_where"], sort=False):
        reasons = [str(e or "").strip().splitlines()[-1:] or [""] for e in part["error"]]
        color = STATUS_COLORS.get(status, "#cf222e")
        fig.add_scatter(
            x=part["_x"].tolist(), y=part["_y"].tolist(), mode="markers", name=status, meta=where,
            legendgroup=f"status:{status}", showlegend=f"status:{status}" not in shown,
            marker={"symbol": STATUS_SYMBOLS.get(status, "x"), "size": 11, "color": color,
                    "line": {"width": 2, "color": color}},
            customdata=[[*h, r[0][:200]] for h, r in zip(hover(part), reasons)],
            hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>" + status + ": %{customdata[3]}"
                           "<br><span style='font-family:monospace'>%{customdata[2]}</span><extra></extra>"),
            row=row, col=col)
        shown.add(f"status:{status}")


def lacking(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`frame` with each ok row that has no `metric` given the status NO_VALUE and, as its error, why (`why_missing`):
    passed to `add_not_ok`, such a case is drawn in the strip with the failed ones, its reason in the hover."""
    missing = (frame["status"] == "ok") & (frame[metric].isna() if metric in frame else True)
    if not missing.any():
        return frame
    out = frame.assign(error=frame["error"].astype(object) if "error" in frame else None)
    out.loc[missing, "error"] = [why_missing(record, metric) for _, record in frame[missing].iterrows()]
    out.loc[missing, "status"] = NO_VALUE
    return out


def why_missing(record, metric: str) -> str:
    """Why an ok record has no `metric`, in its run's words: the meaning the run declared for the metric, or for the
    input of it that the record lacks too (a saving of a peak that was not tracked); the bare fact where the run
    declared none. A metric measured NaN or infinite (the record's `nonfinite`), or the input of it that was, is said
    to be so: it was recorded."""
    named = record.get("nonfinite") if isinstance(record.get("nonfinite"), dict) else {}
    run_dir = record.get("run_dir")
    specs = ((_declared(str(run_dir)).get(record.get("suite")) or {}) if run_dir else {}).get("metrics") or {}
    inputs = [m for m in (specs.get(metric) or {}).get("inputs") or () if pd.isna(record.get(m))]
    name = metric if metric in named or not inputs else inputs[0]
    if name in named:
        return (f"{metric}: " * (name != metric)) + f"{name} measured {NONFINITE_TEXT.get(named[name], named[name])}"
    meaning = (specs.get(name) or {}).get("meaning")
    return f"no {name} recorded" + (f" ({meaning})" if meaning else "")


def label_lines(fig, lines, height: int, top: float | None = None) -> None:
    """Horizontal reference lines, each (y, label, line style), labelled in the right margin, where no bar or point
    is, a label's height apart. The y range runs from 0 to `top` (default: a tenth above every line and trace), so
    that the places computed here hold; the legend moves above the plot to leave the margin to the labels."""
    top = top or 1.1 * max([y for y, _, _ in lines] + _drawn_y(fig, None, None))
    gap = LABEL_PX / (height - MARGIN["t"] - MARGIN["b"]) * top
    placed: list[float] = []
    for y, label, line in sorted(lines, key=lambda entry: entry[0]):
        fig.add_hline(y=y, line=line)
        placed.append(max(y, placed[-1] + gap) if placed else y)
        fig.add_annotation(xref="paper", x=1.0, xanchor="left", y=placed[-1], yanchor="middle", showarrow=False,
                           align="left", font={"size": 11, "color": "#57606a"}, text=label)
    fig.update_layout(yaxis_range=[0, max(top, placed[-1] + gap)], margin=MARGIN,
                      legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"})
