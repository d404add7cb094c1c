"""MoE figures: MaxVio per training step for each router (final loss and held-out perplexity in the legend), the
three MaxVio measures per router beside Wang et al. 2024's MaxVio_global as labelled reference lines, the held-out
expert load of every expert per router, and dispatch tokens/s and peak bytes against the expert count."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports.figures import (
    add_not_ok,
    bytes_unit,
    colors,
    hover,
    hovertemplate,
    label_lines,
    ok,
    params_label,
    wrap_label,
)
from reports.figures import unit as unit_of

METRICS = ("max_vio_batch", "max_vio_train", "max_vio_global", "final_loss", "perplexity", "step_time_ms",
           "tokens_per_s", "tflops", "pct_of_peak", "speedup_x", "peak_mem_bytes", "mem_saving_x", "fused_grouped_gemm",
           "grouped_mm_fallback")
# Wang et al. 2024, Table 2 (1B model, 100B tokens): MaxVio_global with the auxiliary loss vs loss-free balancing.
PAPER_MAX_VIO = (("aux loss", 0.72), ("aux-loss-free", 0.04))
SMOOTH = 10  # steps: one batch's MaxVio swings with which topics it drew
HOVER = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{x}: %{y:.4g}<br>"
         "<span style='font-family:monospace'>%{customdata[2]}</span><extra>%{fullData.name}</extra>")


def figures(frame: pd.DataFrame) -> list:
    frame = frame.assign(part=[p.get("part") for p in frame["params"]])
    color = colors(frame["variant"])
    balance, dispatch = frame[frame["part"] == "balance"], frame[frame["part"] == "dispatch"]
    made = (_max_vio_curves(balance, color), _max_vio_bars(balance, color), _loads(balance, color),
            _dispatch(dispatch, color, "tokens_per_s", "throughput, forward + backward",
                      "Dispatch throughput against the expert count"),
            _dispatch(dispatch, color, "peak_mem_bytes", "peak bytes", "Dispatch peak memory against the expert count"))
    return [f for f in made if f is not None]


def _with_sample(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    if "samples" not in rows:
        return rows.iloc[0:0]
    return rows[[bool((s or {}).get(name)) for s in rows["samples"]]]


def _max_vio_curves(rows, color):
    rows = _with_sample(ok(rows, "final_loss"), "max_vio_curve")
    if rows.empty:
        return None
    fig = go.Figure()
    for _, row in rows.iterrows():
        curve = row["samples"]["max_vio_curve"]
        label = f"{row['variant']} · loss {row['final_loss']:.3f}, ppl {row['perplexity']:.2f}"
        if rows["run"].nunique() > 1:
            label += f" · {row['run']}"
        steps = list(range(1, len(curve) + 1))
        fig.add_scatter(x=steps, y=curve, mode="lines", name=label, legendgroup=label, opacity=0.3,
                        line={"color": color[row["variant"]], "width": 1})
        fig.add_scatter(x=steps, y=_moving_mean(curve, SMOOTH), mode="lines", name=f"{SMOOTH}-step mean",
                        legendgroup=label, showlegend=False, line={"color": color[row["variant"]], "width": 2.5})
    fig.update_layout(title=f"MaxVio per training batch, per router, and its {SMOOTH}-step mean (legend: final "
                            "training loss, held-out perplexity)",
                      xaxis_title="training step", yaxis_title="MaxVio_batch (mean over layers)",
                      template="plotly_white", height=440)
    return fig


def _moving_mean(values, window):
    return [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def _max_vio_bars(rows, color):
    rows = ok(rows, "max_vio_global")
    if rows.empty:
        return None
    fig = go.Figure()
    measures = (("max_vio_batch", "per batch, last quarter"), ("max_vio_train", "all training tokens"),
                ("max_vio_global", "held-out pass"))
    for metric, label in measures:
        fig.add_bar(x=[f"{v} · {r}" if rows["run"].nunique() > 1 else v for v, r in zip(rows["variant"], rows["run"])],
                    y=rows[metric].tolist(), name=label, customdata=hover(rows), hovertemplate=HOVER)
    label_lines(fig, [(value, f"Wang et al. 2024, 1B model,<br>{label}: MaxVio_global {value}",
                       {"dash": "dot", "color": "#6e7781"}) for label, value in PAPER_MAX_VIO], height=440)
    fig.update_layout(title="MaxVio per router (lower is balanced; 0 = every expert equally loaded)",
                      barmode="group", yaxis_title="MaxVio", template="plotly_white", height=440)
    return fig


def _loads(rows, color):
    rows = _with_sample(ok(rows), "load_curve")
    if rows.empty:
        return None
    titles = [f"{v} · {r}" if rows["run"].nunique() > 1 else v for v, r in zip(rows["variant"], rows["run"])]
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.06)
    for i, (_, row) in enumerate(rows.iterrows(), start=1):
        share = row["samples"]["load_curve"]  # layer-major: each layer's experts, shares of that layer's slots
        experts = row["params"].get("experts") or len(share)
        x = [f"L{k // experts}·E{k % experts}" for k in range(len(share))]
        fig.add_bar(x=x, y=[s * experts for s in share], name=row["variant"], marker_color=color[row["variant"]],
                    showlegend=False, row=i, col=1)
        fig.add_hline(y=1.0, line_dash="dot", line_color="#6e7781", row=i, col=1)
    fig.update_yaxes(title_text="load / mean")
    fig.update_layout(title="Held-out expert load per layer and expert (1 = balanced), per router",
                      template="plotly_white", height=200 + 170 * len(rows))
    return fig


def _dispatch(rows, color, metric, y_title, title):
    if rows.empty:
        return None
    rows = rows.assign(group=[params_label(p, ("top_k", "dim", "hidden", "tokens", "dtype")) for p in rows["params"]],
                       experts=[p.get("experts") for p in rows["params"]])
    groups = list(dict.fromkeys(rows["group"]))
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=[wrap_label(g) for g in groups],
                        horizontal_spacing=0.08)
    is_bytes = metric.endswith("_bytes") and metric in rows
    scale, unit = bytes_unit(rows[metric]) if is_bytes else (1.0, unit_of(rows, metric))
    y_name = f"{y_title} ({unit})" if is_bytes else metric  # the hover's name for y: bytes are drawn in `unit`
    for col, group in enumerate(groups, start=1):
        part = rows[rows["group"] == group]
        good = ok(part, metric)
        for variant, v in good.groupby("variant", sort=False):
            v = v.sort_values("experts")
            fig.add_scatter(x=v["experts"].tolist(), y=(v[metric] / scale).tolist(), mode="markers+lines",
                            name=variant, legendgroup=variant, showlegend=col == 1,
                            marker={"color": color[variant], "size": 9}, line={"color": color[variant]},
                            customdata=hover(v), hovertemplate=hovertemplate("experts", y_name), row=1, col=col)
        add_not_ok(fig, part, good["experts"] if len(good) else (), good[metric] / scale if len(good) else (),
                   row=1, col=col, x=lambda r: r["params"].get("experts"), log_x=True)
    fig.update_xaxes(title_text="routed experts", type="log", tickvals=sorted(rows["experts"].dropna().unique()))
    fig.update_yaxes(title_text=f"{y_title}{f' ({unit})' if unit else ''}", row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", height=440)
    return fig
