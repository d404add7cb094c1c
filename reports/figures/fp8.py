"""FP8 figures: GEMM TFLOP/s per shape and recipe with the device's dense peak as labelled lines, SQNR per recipe on
normal and outlier inputs, quantizer GB/s with the memory bandwidth as a line, and training: the loss curve of each
recipe against the high-precision run, and the loss gap. A case that did not finish (a Triton kernel skipped off CUDA)
is marked where its bar or point would be."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from reports.figures import add_not_ok, axis, colors, hover, ok, unit

METRICS = ("gemm_time_ms", "gemm_tflops", "gemm_pct_of_peak", "gemm_pct_of_roofline", "speedup_x", "sqnr_db",
           "max_rel_err", "quantize_gbps", "quantize_pct_of_bandwidth", "loss_gap_final", "loss_gap_mean",
           "train_tokens_per_s")
HOVER = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{x}: %{y:.4g}<br>"
         "<span style='font-family:monospace'>%{customdata[2]}</span><extra>%{fullData.name}</extra>")


def figures(frame: pd.DataFrame) -> list:
    frame = frame.assign(part=[p.get("part") for p in frame["params"]])
    color = colors(frame["variant"])
    parts = (_gemm, _accuracy, _quantize, _loss_curves, _training)
    return [f for f in (part(frame, color) for part in parts) if f is not None]


def _gemm(frame, color):
    cases = frame[frame["part"] == "gemm"]
    rows = ok(cases, "gemm_tflops")
    if rows.empty:
        return None
    rows = rows.assign(shape=[p.get("shape") for p in rows["params"]])
    fig = go.Figure()
    for variant, part in rows.groupby("variant", sort=False):
        fig.add_scatter(x=part["shape"].tolist(), y=part["gemm_tflops"].tolist(), mode="markers+lines",
                        name=variant, marker={"color": color[variant], "size": 10}, line={"color": color[variant]},
                        customdata=hover(part), hovertemplate=HOVER)
    for is_fp8, label in ((False, "high-precision peak"), (True, "FP8 peak")):
        recipe = rows[(rows["variant"] != rows["reference"]) == is_fp8]
        _peak_line(fig, recipe, "gemm_tflops", "gemm_pct_of_peak", label, unit(rows, "gemm_tflops"))
    add_not_ok(fig, cases, rows["shape"], rows["gemm_tflops"], x=lambda r: r["params"].get("shape"))
    fig.update_layout(title="GEMM throughput per shape", xaxis_title="shape (M, N, K by name)",
                      yaxis_title=axis(rows, "gemm_tflops", "GEMM throughput"), template="plotly_white", height=420)
    return fig


def _accuracy(frame, color):
    cases = frame[frame["part"] == "accuracy"]
    rows = ok(cases, "sqnr_db")
    if rows.empty:
        return None
    rows = rows.assign(input=[p.get("input") for p in rows["params"]])
    fig = go.Figure()
    for variant, part in rows.groupby("variant", sort=False):
        fig.add_bar(x=part["input"].tolist(), y=part["sqnr_db"].tolist(), name=variant,
                    marker_color=color[variant], customdata=hover(part), hovertemplate=HOVER)
    add_not_ok(fig, cases, rows["input"], rows["sqnr_db"], x=lambda r: r["params"].get("input"))
    fig.update_layout(title="GEMM accuracy against an fp64 product (SQNR, higher is better)", barmode="group",
                      xaxis_title="input", yaxis_title=axis(rows, "sqnr_db", "SQNR"), template="plotly_white",
                      height=420)
    return fig


def _peak_line(fig, rows, metric, pct, label, unit):
    """The device's datasheet peak, recovered from records that know it (value * 100 / pct)."""
    known = rows[rows[pct].notna()] if pct in rows else rows.iloc[0:0]
    if len(known):
        peak = float((known[metric] * 100 / known[pct]).iloc[0])
        fig.add_hline(y=peak, line_dash="dash", line_color="#6e7781", annotation_text=f"{label} {peak:.0f} {unit}")


def _quantized(params: dict) -> str:
    return f"{params.get('operand')} · {params.get('impl')}"


def _quantize(frame, color):
    cases = frame[frame["part"] == "quantize"]
    rows = ok(cases, "quantize_gbps")
    if rows.empty:
        return None
    rows = rows.assign(what=[_quantized(p) for p in rows["params"]])
    fig = go.Figure()
    for variant, part in rows.groupby("variant", sort=False):
        fig.add_bar(x=part["what"].tolist(), y=part["quantize_gbps"].tolist(), name=variant,
                    marker_color=color[variant], customdata=hover(part), hovertemplate=HOVER)
    _peak_line(fig, rows, "quantize_gbps", "quantize_pct_of_bandwidth", "memory bandwidth", unit(rows, "quantize_gbps"))
    add_not_ok(fig, cases, rows["what"], rows["quantize_gbps"], x=lambda r: _quantized(r["params"]))
    fig.update_layout(title="Quantizer throughput (bytes read + written)", barmode="group",
                      xaxis_title="operand · implementation", yaxis_title=axis(rows, "quantize_gbps", "throughput"),
                      template="plotly_white", height=420)
    return fig


def _loss_curves(frame, color):
    rows = ok(frame[frame["part"] == "training"])
    rows = rows[[bool((s or {}).get("loss_curve")) for s in rows["samples"]]] if "samples" in rows else rows.iloc[0:0]
    if rows.empty:
        return None
    fig = go.Figure()
    for _, row in rows.iterrows():
        loss = row["samples"]["loss_curve"]
        fig.add_scatter(x=list(range(1, len(loss) + 1)), y=loss, mode="lines", name=row["variant"],
                        line={"color": color[row["variant"]],
                              "dash": "dash" if row["variant"] == row["reference"] else None})
    fig.update_layout(title="Training loss per step: each recipe against the high-precision run (dashed)",
                      xaxis_title="step", yaxis_title="loss", template="plotly_white", height=420)
    return fig


def _training(frame, color):
    cases = frame[frame["part"] == "training"]
    rows = ok(cases, "loss_gap_final")
    if rows.empty:
        return None
    fig = go.Figure()
    for metric, label in (("loss_gap_final", "final step"), ("loss_gap_mean", "mean over steps")):
        fig.add_bar(x=rows["variant"].tolist(), y=(100 * rows[metric]).tolist(), name=label,
                    customdata=hover(rows), hovertemplate=HOVER)
    add_not_ok(fig, cases, rows["variant"], 100 * rows["loss_gap_final"], x=lambda r: r["variant"])
    fig.update_layout(title="Training: relative loss gap to the high-precision run (%)", barmode="group",
                      yaxis_title="loss gap (%)", template="plotly_white", height=400)
    return fig
