"""FSDP x checkpointing figures: peak memory per rank, and step time, against world size, one line per
checkpointing variant (and run): how sharding and checkpointing compound. Runs at several world sizes (one
`bench run --nproc-per-node N` each) are read together, one line per variant and machine."""

from __future__ import annotations

import pandas as pd
from plotly.subplots import make_subplots

from reports.figures import add_not_ok, bytes_unit, colors, hover, hovertemplate, ok

METRICS = ("peak_mem_bytes", "rank_min_peak_mem_bytes", "activation_bytes", "param_bytes", "step_time_ms",
           "tokens_per_s", "mem_saving_x", "time_overhead_x")


def figures(frame: pd.DataFrame) -> list:
    rows = ok(frame, "peak_mem_bytes", "step_time_ms")
    if rows.empty:
        return []
    rows = rows.assign(world_size=[p.get("world_size", 1) for p in rows["params"]],
                       shape=[_shape(p) for p in rows["params"]])
    return [_against_world(frame, part, shape) for shape, part in rows.groupby("shape", sort=False)]


def _against_world(frame: pd.DataFrame, rows: pd.DataFrame, shape: str):
    fig = make_subplots(rows=1, cols=2, subplot_titles=["peak memory per rank (largest rank)",
                                                        "step time (slowest rank)"], horizontal_spacing=0.1)
    color = colors(frame["variant"])
    div, unit = bytes_unit(rows["peak_mem_bytes"])
    # one line per variant and machine: each world size is a run of its own (one --nproc-per-node per run)
    several_machines = rows["env_id"].nunique() > 1
    for (variant, _), part in rows.sort_values("world_size").groupby(["variant", "env_id"], sort=False):
        name = f"{variant} · {part['run'].iloc[0]}" if several_machines else variant
        for col, (metric, scale, label) in enumerate([("peak_mem_bytes", div, f"peak {unit}"),
                                                      ("step_time_ms", 1.0, "step ms")], start=1):
            fig.add_scatter(x=part["world_size"].tolist(), y=(part[metric] / scale).tolist(), mode="lines+markers",
                            name=name, legendgroup=name, showlegend=col == 1, row=1, col=col,
                            line={"color": color[variant]}, customdata=hover(part),
                            hovertemplate=hovertemplate("world size", label))
    add_not_ok(fig, frame[frame["params"].map(lambda p: _shape(p) == shape)], rows["world_size"],
               rows["peak_mem_bytes"] / div, row=1, col=1)
    fig.update_xaxes(title_text="world size (ranks)", type="log", dtick=0.30103)
    fig.update_yaxes(title_text=f"peak memory per rank ({unit})", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="step time (ms)", rangemode="tozero", row=1, col=2)
    fig.update_layout(template="plotly_white", height=480, title=f"FSDP2 x checkpointing against world size ({shape})")
    return fig


def _shape(p: dict) -> str:
    return f"d_model={p.get('d_model')}, layers={p.get('layers')}, seq={p.get('seq')}, batch={p.get('batch')}"
