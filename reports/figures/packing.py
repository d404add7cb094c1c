"""Packing figures: packing efficiency per packer and length distribution, and what each packer costs the loader.
A packer that did not run (Liger's kernel off CUDA) is marked at its distribution, above the packers that did; so is,
in the one panel that lacks it, an ok case without that panel's metric (one measured NaN or infinite)."""

from __future__ import annotations

import pandas as pd
from plotly.subplots import make_subplots

from reports.figures import add_not_ok, axis, colors, hover, lacking, ok

METRICS = ("packing_efficiency", "efficiency_gain_x", "rows_per_epoch", "rows_saving_x", "packer_seqs_per_s",
           "effective_tokens_per_s", "effective_speedup_x", "loss_diff", "dataset_pad_fraction")
PANELS = (("packing_efficiency", "packing efficiency (real tokens / row capacity)", "linear"),
          ("effective_tokens_per_s", "real tokens per second in a training step", "log"),
          ("packer_seqs_per_s", "packer speed on the host, sequences per second", "log"))


def figures(frame: pd.DataFrame) -> list:
    frame = frame.assign(packing_length=[p.get("packing_length") for p in frame["params"]],
                         dist=[p.get("dist") for p in frame["params"]])
    # each panel's points are the ok cases with its metric: a case lacking one panel's is marked there, and drawn in
    # the others (colors from every ok case, so that a variant has one color in all three)
    color = colors(ok(frame)["variant"])
    panels = [(ok(frame, metric), metric, title, scale) for metric, title, scale in PANELS]
    return [_panel(frame, rows, color, *spec) for rows, *spec in panels if not rows.empty]


def _panel(frame: pd.DataFrame, rows: pd.DataFrame, color: dict, metric: str, title: str, scale: str):
    lengths = sorted(frame["packing_length"].dropna().unique())  # a length where no packer ran: its marks alone
    fig = make_subplots(rows=1, cols=len(lengths), shared_yaxes=True,
                        subplot_titles=[f"rows of {int(n)} tokens" for n in lengths])
    frame = lacking(frame, metric)
    for col, n in enumerate(lengths, start=1):
        part = rows[rows["packing_length"] == n]
        for variant, v in part.groupby("variant", sort=False):
            fig.add_scatter(x=v["dist"].tolist(), y=v[metric].tolist(), mode="markers", name=variant,
                            legendgroup=variant, showlegend=col == 1, row=1, col=col,
                            marker={"color": color[variant], "size": 11, "line": {"width": 1, "color": "white"}},
                            customdata=hover(v),
                            hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{x}: %{y:.4g}<br>"
                                           "<span style='font-family:monospace'>%{customdata[2]}</span>"
                                           "<extra>%{fullData.name}</extra>"))
        # the y axis is shared: the strip sits above every panel's points, so that it reads the same in each
        add_not_ok(fig, frame[frame["packing_length"] == n], part["dist"], rows[metric], row=1, col=col,
                   x=lambda r: r["dist"], log_y=scale == "log")
        fig.update_xaxes(title_text="length distribution", row=1, col=col)
    fig.update_yaxes(title_text=axis(rows, metric, title), type=scale, row=1, col=1)
    if metric == "packing_efficiency":  # 0 to 1 in every figure, stretched only for the marks above the points
        fig.update_yaxes(range=[0, max([1.0, *(y for t in fig.data for y in t.y if y is not None)]) + 0.05])
    fig.update_layout(title=title, height=420, template="plotly_white", legend={"title": "packer"})
    return fig
