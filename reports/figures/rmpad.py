"""Padding-removal figures: what each unpadded backend saves against the padded batch, as padding grows.

x is the batch's pad fraction; y the saving (memory) or speed-up (time) against `padded` at the same params. The
dashed line is the ideal of work that follows real tokens only: 1 / (1 - pad fraction).
"""

from __future__ import annotations

import pandas as pd
from plotly.subplots import make_subplots

from reports.figures import add_not_ok, colors, hover, hovertemplate, lacking, ok, same_case

METRICS = ("step_time_ms", "peak_mem_bytes", "pad_fraction", "mem_saving_x", "speedup_x", "real_tokens_per_s",
           "padded_tokens_per_s")
PANELS = (("mem_saving_x", "peak memory saving (x)"), ("speedup_x", "speed-up (x)"))


def figures(frame: pd.DataFrame) -> list:
    frame = frame.assign(mode=[p.get("mode", "train") for p in frame["params"]])
    return [f for f in (_mode_figure(frame[frame["mode"] == m], m) for m in ("train", "forward")) if f is not None]


def _mode_figure(frame: pd.DataFrame, mode: str):
    rows = ok(frame, "pad_fraction")
    if rows.empty and frame.empty:
        return None
    fig = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[title for _, title in PANELS])
    color = colors(frame["variant"])
    xs = sorted(rows["pad_fraction"].dropna().unique()) if not rows.empty else []
    for col, (metric, title) in enumerate(PANELS, start=1):
        have = ok(rows, metric) if metric in rows else rows.iloc[0:0]
        for variant, part in have.sort_values("pad_fraction").groupby("variant", sort=False):
            fig.add_scatter(x=part["pad_fraction"].tolist(), y=part[metric].tolist(), mode="lines+markers",
                            name=variant, legendgroup=variant, showlegend=col == 1, row=1, col=col,
                            line={"color": color[variant]}, marker={"size": 9}, customdata=hover(part),
                            hovertemplate=hovertemplate("pad fraction", title))
        if xs:
            grid = [min(xs) + (max(xs) - min(xs)) * i / 20 for i in range(21)]
            fig.add_scatter(x=grid, y=[1 / (1 - x) for x in grid], mode="lines", name="ideal: real tokens only",
                            legendgroup="ideal", showlegend=col == 1, row=1, col=col,
                            line={"dash": "dash", "color": "#6e7781"}, hoverinfo="skip")
        # an ok case without this panel's metric (flex's peak on a CPU) is drawn with the failed ones, with its reason
        add_not_ok(fig, lacking(frame, metric), have["pad_fraction"] if len(have) else (),
                   have[metric] if len(have) else (), row=1, col=col, x=same_case(frame, "pad_fraction"))
        fig.update_xaxes(title_text="pad fraction of the padded batch", row=1, col=col)
        fig.update_yaxes(title_text=title, row=1, col=col)
    fig.update_layout(title=f"{mode}: savings against the padded batch at the same real tokens", height=440,
                      template="plotly_white")
    return fig
