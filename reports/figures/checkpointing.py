"""Checkpointing figures: peak memory against step time per variant with its Pareto front, and the savings each
variant buys against the overhead it costs, both relative to the reference (no checkpointing)."""

from __future__ import annotations

import math

import pandas as pd
from plotly.subplots import make_subplots

from reports.figures import (
    add_not_ok,
    add_run_legend,
    axis,
    bytes_unit,
    colors,
    declared,
    hover,
    hovertemplate,
    ok,
    params_groups,
    run_symbols,
    wrap_label,
)

METRICS = ("step_time_ms", "peak_mem_bytes", "activation_bytes", "mem_saving_x", "activation_saving_x",
           "time_overhead_x", "recompute_flops_x", "tflops", "pct_of_peak", "tokens_per_s", "energy_j")
RATIOS = (("mem_saving_x", "peak memory saving (x)"), ("activation_saving_x", "activation saving (x)"))


def figures(frame: pd.DataFrame) -> list:
    return [f for f in (pareto(frame), ratios(frame)) if f is not None]


def pareto_front(rows: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points no other point beats on both x and y (both lower is better), sorted by x."""
    rows = rows.sort_values([x, y])
    return rows[rows[y] < rows[y].astype(float).cummin().shift(fill_value=math.inf)]


def _points(fig, rows, x, y, div, style, shown, row, col, x_name, y_name):
    color, symbol = style
    for variant, part in rows.groupby("variant", sort=False):
        fig.add_scatter(x=part[x].tolist(), y=(part[y] / div).tolist(), mode="markers", name=variant,
                        legendgroup=variant, showlegend=variant not in shown, customdata=hover(part),
                        hovertemplate=hovertemplate(x_name, y_name), row=row, col=col,
                        marker={"color": color[variant], "size": 11, "line": {"width": 1, "color": "white"},
                                "symbol": [symbol[r] for r in part["run"]]})
        shown.add(variant)


def _grid(n: int, titles) -> tuple:
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles), horizontal_spacing=0.08,
                        vertical_spacing=0.5 / rows)
    fig.update_annotations(font_size=12)
    fig.update_layout(template="plotly_white", height=170 + 360 * rows, margin={"t": 100})
    return fig, cols


def pareto(frame: pd.DataFrame):
    """x: step time, y: peak memory; one panel per params group, one trace per variant, one symbol per run."""
    groups = params_groups(frame, declared(frame, "checkpointing").get("param_defaults"))
    fig, cols = _grid(len(groups), [wrap_label(label) for label, _ in groups])
    style = colors(frame["variant"]), run_symbols(frame)
    shown: set[str] = set()
    for i, (_, rows) in enumerate(groups):
        r, c = i // cols + 1, i % cols + 1
        good = ok(rows, "step_time_ms", "peak_mem_bytes")
        div, unit = bytes_unit(good["peak_mem_bytes"] if len(good) else [])  # per panel: shapes differ by 1000x
        _points(fig, good, "step_time_ms", "peak_mem_bytes", div, style, shown, r, c, "step time ms", f"peak {unit}")
        for _, part in good.groupby("run", sort=False):
            front = pareto_front(part, "step_time_ms", "peak_mem_bytes")
            fig.add_scatter(x=front["step_time_ms"].tolist(), y=(front["peak_mem_bytes"] / div).tolist(),
                            mode="lines", line={"dash": "dot", "color": "#57606a", "width": 1.5},
                            name="Pareto front", legendgroup="front", showlegend="front" not in shown,
                            hoverinfo="skip", row=r, col=c)
            shown.add("front")
        xs, ys = (good["step_time_ms"], good["peak_mem_bytes"] / div) if len(good) else ([], [])
        add_not_ok(fig, rows, xs, ys, row=r, col=c)
        if len(good):
            fig.update_xaxes(title_text=axis(good, "step_time_ms", "step time"), row=r, col=c)
            fig.update_yaxes(title_text=f"peak memory ({unit})", rangemode="tozero", row=r, col=c)
        else:  # only failures here: a strip of markers, no scale to read
            fig.update_xaxes(title_text="no case finished ok", showticklabels=False, row=r, col=c)
            fig.update_yaxes(range=[-1, 1], showticklabels=False, row=r, col=c)
    add_run_legend(fig, frame)
    fig.update_layout(title="Peak memory vs step time per variant (lower-left is better)")
    return fig


def ratios(frame: pd.DataFrame):
    """Savings against the reference (y) for the step-time overhead they cost (x); the reference sits at (1, 1)."""
    panels = [(m, name) for m, name in RATIOS if m in frame and frame[m].notna().any()]
    if not panels or "time_overhead_x" not in frame:
        return None
    fig, _ = _grid(len(panels), [name for _, name in panels])
    style = colors(frame["variant"]), run_symbols(frame)
    shown: set[str] = set()
    for c, (metric, name) in enumerate(panels, start=1):
        good = ok(frame, "time_overhead_x", metric)
        _points(fig, good, "time_overhead_x", metric, 1.0, style, shown, 1, c, "time overhead x", name)
        add_not_ok(fig, frame, good["time_overhead_x"], good[metric], row=1, col=c)
        fig.add_vline(x=1, line={"dash": "dash", "color": "#afb8c1"}, row=1, col=c)
        fig.add_hline(y=1, line={"dash": "dash", "color": "#afb8c1"}, row=1, col=c)
        fig.update_yaxes(title_text=name, row=1, col=c)
    fig.update_xaxes(title_text="step time overhead (x reference)")
    add_run_legend(fig, frame)
    fig.update_layout(title="Savings vs time overhead against no checkpointing (upper-left is better)")
    return fig
