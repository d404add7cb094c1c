"""Detection figures: AP on small objects, and AP overall, against latency per image, one point per scale-handling
variant, head and resolution, with the Pareto front (no other point both faster and more accurate) drawn through the
points that reach it; and the FLOPs each variant spends per image."""

from __future__ import annotations

import pandas as pd
from plotly.subplots import make_subplots

from reports.figures import add_not_ok, colors, hover, ok

METRICS = ("ap", "ap50", "ap_small", "ap_medium", "ap_large", "ar_small", "latency_ms", "images_per_s",
           "image_flops", "peak_mem_bytes", "time_overhead_x")
QUALITY = (("ap_small", "AP small"), ("ap", "AP [.5:.95]"))
HEAD_SYMBOLS = {"centernet": "circle", "yolo": "square", "fcos": "diamond"}


def pareto(rows: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows that no faster (or equally fast) row matches or beats on y, sorted by x."""
    rows = rows.sort_values([x, y], ascending=[True, False])
    front, best = [], float("-inf")
    for i, value in rows[y].items():
        if value > best:
            front.append(i)
            best = value
    return rows.loc[front]


def _label(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(head=[p.get("head") for p in rows["params"]],
                       resolution=[p.get("resolution") for p in rows["params"]])


def figures(frame: pd.DataFrame) -> list:
    rows = _label(ok(frame, "latency_ms", "ap", "ap_small"))
    if rows.empty:
        return []
    figs = [_against_latency(frame, rows, metric, title) for metric, title in QUALITY]
    return figs + [_flops(rows)]


def _against_latency(frame: pd.DataFrame, rows: pd.DataFrame, metric: str, title: str):
    fig = make_subplots(rows=1, cols=1)
    color = colors(rows["variant"])
    for (variant, head, res), v in rows.groupby(["variant", "head", "resolution"], sort=False):
        fig.add_scatter(x=v["latency_ms"].tolist(), y=v[metric].tolist(), mode="markers",
                        name=f"{variant} · {head} · {res} px", legendgroup=variant,
                        marker={"color": color[variant], "symbol": HEAD_SYMBOLS.get(head, "circle"), "size": 12,
                                "line": {"width": 1, "color": "white"}},
                        customdata=hover(v),
                        hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>latency %{x:.4g} ms, "
                                       + metric + " %{y:.4g}<br><span style='font-family:monospace'>"
                                       "%{customdata[2]}</span><extra>%{fullData.name}</extra>"))
    for run, part in rows.groupby("run", sort=False):
        front = pareto(part, "latency_ms", metric)
        fig.add_scatter(x=front["latency_ms"].tolist(), y=front[metric].tolist(), mode="lines",
                        name="Pareto front" if rows["run"].nunique() == 1 else f"Pareto front ({run})",
                        line={"color": "#57606a", "dash": "dash", "shape": "hv"}, hoverinfo="skip")
    add_not_ok(fig, frame, rows["latency_ms"], rows[metric], log_x=True)  # a failed case has no latency: no x
    fig.update_xaxes(type="log", title_text="latency per image, batch 1 (ms, log)")
    fig.update_yaxes(title_text=f"{title} on the test split (higher is better)", rangemode="tozero")
    fig.update_layout(title=f"{title} against latency: what scale coverage costs", height=460,
                      template="plotly_white", legend={"title": "variant · head · resolution"})
    return fig


def _flops(rows: pd.DataFrame):
    fig = make_subplots(rows=1, cols=1)
    color = colors(rows["variant"])
    for variant, v in rows.groupby("variant", sort=False):
        x = [f"{h} · {r} px" for h, r in zip(v["head"], v["resolution"])]
        fig.add_bar(x=x, y=(v["image_flops"] / 1e9).tolist(), name=variant, marker={"color": color[variant]},
                    customdata=hover(v),
                    hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{y:.4g} GFLOP per image<br>"
                                   "<span style='font-family:monospace'>%{customdata[2]}</span>"
                                   "<extra>%{fullData.name}</extra>"))
    fig.update_yaxes(title_text="GFLOP per image (counted)")
    fig.update_layout(title="Compute per image: a pyramid pays for every scale", barmode="group", height=420,
                      template="plotly_white", legend={"title": "variant"})
    return fig
