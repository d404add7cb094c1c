"""Figures of a distributed suite against world size: each world size is a run of its own, read together."""

from __future__ import annotations

import math

import pandas as pd
from plotly.subplots import make_subplots

from reports.figures import add_not_ok, axis, bytes_unit, colors, hover, hovertemplate, ok


def against_world_size(frame: pd.DataFrame, title: str, shape_keys: tuple[str, ...]) -> list:
    """For a distributed suite: per shape (the params named in shape_keys), peak memory per rank (the largest rank)
    and step time (the slowest rank) against world size, one line per variant and machine: each world size is a run
    of its own (one `--nproc-per-node` per run), read together."""
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
        add_not_ok(fig, failed, part["world_size"], part["peak_mem_bytes"] / div, row=1, col=1,
                   x=lambda r: r["params"].get("world_size", 1), log_x=True)
        sizes = sorted({*part["world_size"], *(p.get("world_size", 1) for p in failed["params"])})
        # the world sizes that ran, a fifth of a decade beyond each end: one size alone is not a span from 1/8 to 8
        span = [math.log10(sizes[0]) - 0.2, math.log10(sizes[-1]) + 0.2]
        fig.update_xaxes(title_text="world size (ranks)", type="log", tickvals=sizes, range=span)
        fig.update_yaxes(title_text=f"peak memory per rank ({unit})", rangemode="tozero", row=1, col=1)
        fig.update_yaxes(title_text=axis(rows, "step_time_ms", "step time"), rangemode="tozero", row=1, col=2)
        fig.update_layout(template="plotly_white", height=480, title=f"{title} against world size ({name_of_shape})")
        figs.append(fig)
    return figs
