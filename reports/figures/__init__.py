"""Per-suite figure modules and the helpers they share.

A suite adds `reports/figures/<suite>.py` with `figures(frame) -> list[plotly Figure]` (and optionally `METRICS`, the
columns of its results table); nothing else changes. `frame` holds that suite's records from `load_frame`: one row per
record with its metrics as columns, plus `run` (a label naming the machine), `size` and `command` (the exact
`bench run` line that reproduces the case). Failed, OOM and skipped cases are rows too: figures draw them with
`add_not_ok` rather than drop them.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import default
from bench.records import STATUSES, read_run_json, records_frame, reproduce_command

NOT_OK = tuple(s for s in STATUSES if s != "ok")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
RUN_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "star", "pentagon", "hexagon", "cross")
STATUS_COLORS = {"oom": "#9a6700", "timeout": "#cf222e", "error": "#cf222e", "skipped": "#6e7781"}
# The columns `hover` puts in customdata, in this order: hovertemplates refer to them as %{customdata[i]}.
HOVER_COLUMNS = ("case_id", "run", "command")


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

        return _specs.figures(suite, rows.reset_index(drop=True))
    return list(module.figures(rows.reset_index(drop=True)))


def run_label(meta: dict | None, run_dir: str | Path) -> str:
    """What tells runs apart in a legend: the GPU model (with a count when several), else the CPU."""
    env = (meta or {}).get("env") or {}
    names = [g.get("name") or "GPU" for g in env.get("gpus") or []]
    if names:
        return " + ".join(f"{names.count(n)}x {n}" if names.count(n) > 1 else n for n in dict.fromkeys(names))
    return f"CPU {env['cpu_model']}" if env.get("cpu_model") else Path(run_dir).name


def run_labels(run_dirs) -> dict[str, str]:
    """run_dir -> label; runs that would read the same get their size, else their run_id, else their directory."""
    metas = {str(d): read_run_json(d) or {} for d in run_dirs}
    labels = {d: run_label(m, d) for d, m in metas.items()}
    for key in ("size", "run_id", "directory"):
        seen = list(labels.values())
        extra = {d: metas[d].get(key) or d for d in labels}
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
        frame["command"] = [reproduce_command(s, v, p, size, d) for s, v, p, size, d in
                            zip(frame["suite"], frame["variant"], frame["params"], frame["size"], devices)]
        parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["suite", "status", "run"])


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


def params_groups(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per distinct params dict; the label names only the params that vary between groups."""
    keys = frame["params"].map(lambda p: tuple(sorted(p.items(), key=lambda kv: kv[0])))
    groups = list(dict.fromkeys(keys))
    varying = sorted({k for g in groups for k, v in g if len({dict(h).get(k) for h in groups}) > 1})
    label_keys = varying or None
    return [(params_label(dict(g), label_keys), frame[[k == g for k in keys]]) for g in groups]


def bytes_unit(values) -> tuple[float, str]:
    """(divisor, unit) that keeps byte counts readable: GiB, MiB or KiB."""
    top = max((float(v) for v in values if pd.notna(v)), default=0.0)
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if top >= 1024 ** power:
            return 1024.0 ** power, unit
    return 1.0, "B"


def add_not_ok(fig, rows: pd.DataFrame, ok_x=(), ok_y=(), row=None, col=None) -> None:
    """Non-ok cases as x markers in a strip just above the ok points (or at y=0 alone), labelled with their status.

    One legend entry per status across the figure; the hover gives the case_id, the reason's last line, and the
    command that reproduces it.
    """
    rows = rows[rows["status"] != "ok"]
    if rows.empty:
        return
    xs = [float(v) for v in ok_x if pd.notna(v)]
    ys = [float(v) for v in ok_y if pd.notna(v)]
    n = len(rows)
    if xs:
        lo, hi = min(xs), max(xs)
        x = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)] if hi > lo else [lo] * n
        y_top, y_bottom = max(ys), min(ys)
        y = y_top + 0.12 * ((y_top - y_bottom) or abs(y_top) or 1.0)
    else:
        x, y = list(range(n)), 0.0
    shown = {t.legendgroup for t in fig.data if t.showlegend is not False}
    rows = rows.assign(_x=x)
    for status, part in rows.groupby("status", sort=False):
        reasons = [str(e or "").strip().splitlines()[-1:] or [""] for e in part["error"]]
        fig.add_scatter(
            x=part["_x"].tolist(), y=[y] * len(part), mode="markers+text", name=status,
            legendgroup=f"status:{status}", showlegend=f"status:{status}" not in shown,
            text=[status] * len(part), textposition="top center",
            textfont={"size": 10, "color": STATUS_COLORS.get(status, "#cf222e")},
            marker={"symbol": "x", "size": 11, "color": STATUS_COLORS.get(status, "#cf222e")},
            customdata=[[*h, r[0][:200]] for h, r in zip(hover(part), reasons)],
            hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>" + status + ": %{customdata[3]}"
                           "<br><span style='font-family:monospace'>%{customdata[2]}</span><extra></extra>"),
            row=row, col=col)
        shown.add(f"status:{status}")


def against_world_size(frame: pd.DataFrame, title: str, shape_keys: tuple[str, ...]) -> list:
    """For a distributed suite: per shape (the params named in shape_keys), peak memory per rank (the largest rank)
    and step time (the slowest rank) against world size, one line per variant and machine: each world size is a run
    of its own (one `--nproc-per-node` per run), read together."""
    from plotly.subplots import make_subplots

    rows = ok(frame, "peak_mem_bytes", "step_time_ms").copy()  # one block: a records frame is many columns
    if rows.empty:
        return []

    def shape(p: dict) -> str:
        return ", ".join(f"{k}={p.get(k)}" for k in shape_keys)

    rows = rows.assign(world_size=[p.get("world_size", 1) for p in rows["params"]],
                       shape=[shape(p) for p in rows["params"]])
    color = colors(frame["variant"])
    figs = []
    for name_of_shape, part in rows.groupby("shape", sort=False):
        fig = make_subplots(rows=1, cols=2, subplot_titles=["peak memory per rank (largest rank)",
                                                            "step time (slowest rank)"], horizontal_spacing=0.1)
        div, unit = bytes_unit(part["peak_mem_bytes"])
        several_machines = part["env_id"].nunique() > 1
        for (variant, _), line in part.sort_values("world_size").groupby(["variant", "env_id"], sort=False):
            name = f"{variant} · {line['run'].iloc[0]}" if several_machines else variant
            for col, (metric, scale, label) in enumerate([("peak_mem_bytes", div, f"peak {unit}"),
                                                          ("step_time_ms", 1.0, "step ms")], start=1):
                fig.add_scatter(x=line["world_size"].tolist(), y=(line[metric] / scale).tolist(),
                                mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1, row=1,
                                col=col, line={"color": color[variant]}, customdata=hover(line),
                                hovertemplate=hovertemplate("world size", label))
        failed = frame[frame["params"].map(lambda p: shape(p) == name_of_shape)]
        add_not_ok(fig, failed, part["world_size"], part["peak_mem_bytes"] / div, row=1, col=1)
        fig.update_xaxes(title_text="world size (ranks)", type="log", dtick=0.30103)
        fig.update_yaxes(title_text=f"peak memory per rank ({unit})", rangemode="tozero", row=1, col=1)
        fig.update_yaxes(title_text=axis(rows, "step_time_ms", "step time"), rangemode="tozero", row=1, col=2)
        fig.update_layout(template="plotly_white", height=480, title=f"{title} against world size ({name_of_shape})")
        figs.append(fig)
    return figs
