"""Multi-token prediction figures: the MTP draft's acceptance rate per variant (held-out teacher-forced and while
decoding) with DeepSeek-V3's reported 85-90% as a labelled band; the training overhead of each MTP variant against the
plain model (step time, peak memory, FLOPs); the speculative decode speed-up over plain greedy decoding of the same
model with DeepSeek-V3's reported 1.8x as a labelled line; and the main head's training loss per step per variant."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports.figures import PALETTE, STATUS_COLORS, colors, hover, label_lines, ok

METRICS = ("step_time_ms", "time_overhead_x", "peak_mem_bytes", "mem_overhead_x", "flops_overhead_x", "final_loss",
           "heldout_loss", "acceptance_rate", "decode_acceptance_rate", "tokens_per_forward", "greedy_tokens_per_s",
           "decode_tokens_per_s", "speedup_x", "matches_greedy", "greedy_divergence_token")
# DeepSeek-V3 §5.4.3: the second token is accepted 85-90% of the time, and decoding runs at 1.8x tokens/s
PAPER_ACCEPTANCE = (0.85, 0.90)
PAPER_SPEEDUP = 1.8
SMOOTH = 20  # loss curves: a moving mean over 1/20 of the steps (the batches are seeded, their noise is ~+-0.1 nats)
HOVER = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{x}: %{y:.4g}<br>"
         "<span style='font-family:monospace'>%{customdata[2]}</span><extra>%{fullData.name}</extra>")


def figures(frame: pd.DataFrame) -> list:
    frame = frame.assign(label=_labels(frame))
    parts = (_acceptance, _overhead, _speedup, _loss_curves)
    return [f for f in (part(frame) for part in parts) if f is not None]


def _labels(frame: pd.DataFrame) -> list[str]:
    """The x category of a row: its variant, with the run and size when the frame holds several."""
    labels = frame["variant"].astype(str)
    for column in ("run", "size"):
        if column in frame and frame[column].nunique() > 1:
            labels = labels + " · " + frame[column].astype(str)
    return labels.tolist()


def _bars(fig, rows, metrics):
    for i, (metric, name) in enumerate(metrics):
        good = ok(rows, metric)
        if len(good):
            fig.add_bar(x=good["label"].tolist(), y=good[metric].tolist(), name=name, customdata=hover(good),
                        hovertemplate=HOVER, marker_color=PALETTE[i % len(PALETTE)],
                        text=[f"{v:.3g}" for v in good[metric]], textposition="outside")


def _not_ok(fig, rows):
    """Cases that did not finish ok, as labelled markers at 0 under their variant."""
    bad = rows[rows["status"] != "ok"]
    if len(bad):
        fig.add_scatter(x=bad["label"].tolist(), y=[0] * len(bad), mode="markers+text", name="not ok",
                        text=bad["status"].tolist(), textposition="top center", customdata=hover(bad),
                        hovertemplate=HOVER, marker={"symbol": "x", "size": 11,
                                                     "color": [STATUS_COLORS.get(s, "#cf222e") for s in bad["status"]]})


def _acceptance(frame):
    rows = frame[frame["variant"] != frame["reference"]]
    if ok(rows, "acceptance_rate").empty and (rows["status"] == "ok").all():
        return None
    fig = go.Figure()
    lo, hi = PAPER_ACCEPTANCE
    band = "#8c959f"
    fig.add_hrect(y0=lo, y1=hi, fillcolor=band, opacity=0.45, line_width=0, layer="above")
    fig.add_scatter(x=[None], y=[None], mode="markers", name="DeepSeek-V3 reported: 85-90% (reference band)",
                    marker={"symbol": "square", "size": 12, "color": band, "opacity": 0.45})
    _bars(fig, rows, (("acceptance_rate", "held-out text, teacher-forced"),
                      ("decode_acceptance_rate", "greedy decoding from held-out prompts")))
    _not_ok(fig, rows)
    fig.update_xaxes(type="category")  # the band's legend entry has no x of its own
    fig.update_layout(title="MTP draft acceptance: the main model's next token equals the draft", barmode="group",
                      yaxis={"title": "acceptance rate", "range": [0, 1.08]}, template="plotly_white", height=420)
    return fig


def _overhead(frame):
    rows = frame[frame["variant"] != frame["reference"]]
    if ok(rows, "time_overhead_x").empty:
        return None
    fig = go.Figure()
    _bars(fig, rows, (("time_overhead_x", "step time"), ("mem_overhead_x", "peak memory"),
                      ("flops_overhead_x", "FLOPs")))
    _not_ok(fig, rows)
    label_lines(fig, [(1, "plain model (D=0)", {"dash": "dash", "color": "#57606a"})], height=420)
    fig.update_layout(title="Training cost of MTP against the plain model (x, lower is better)", barmode="group",
                      yaxis={"title": "x plain", "rangemode": "tozero"}, template="plotly_white", height=420)
    return fig


def _speedup(frame):
    rows = frame[frame["variant"] != frame["reference"]]
    good = ok(rows, "speedup_x")
    if good.empty:
        return None
    fig = go.Figure()
    color = colors(frame["variant"])
    fig.add_bar(x=good["label"].tolist(), y=good["speedup_x"].tolist(), name="speculative / greedy tokens/s",
                marker_color=[color[v] for v in good["variant"]], customdata=hover(good), hovertemplate=HOVER,
                text=[f"{s:.2f}x<br>{g:.0f} -> {d:.0f} tok/s" for s, g, d in
                      zip(good["speedup_x"], good["greedy_tokens_per_s"], good["decode_tokens_per_s"])],
                textposition="outside")
    _not_ok(fig, rows)
    top = max([PAPER_SPEEDUP, *good["speedup_x"].tolist()])
    label_lines(fig, [(1, "plain greedy decoding", {"dash": "dash", "color": "#57606a"}),
                      (PAPER_SPEEDUP, "DeepSeek-V3 reported:<br>1.8x (reference)",
                       {"dash": "dot", "color": "#9a6700"})], height=420, top=1.25 * top)  # room for the bars' text
    fig.update_layout(title="Speculative decoding with the MTP draft: decode tokens/s over greedy (same model, "
                            "KV cache, batch 1)", yaxis_title="speed-up (x)",
                      template="plotly_white", height=420, showlegend=False)
    return fig


def _loss_curves(frame):
    """The main head's training loss per variant (top) and its difference from the plain run of the same run and
    params (bottom): the variants train on the same batches from the same initial main model, so the curves overlap
    and the difference is what MTP changed."""
    rows = ok(frame)
    rows = rows[[bool((s or {}).get("main_loss_curve")) for s in rows["samples"]]] if "samples" in rows else rows[:0]
    if rows.empty:
        return None
    color = colors(frame["variant"])
    smooth = {i: _smooth(row["samples"]["main_loss_curve"]) for i, row in rows.iterrows()}
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.06)
    for i, row in rows.iterrows():
        held = row.get("heldout_loss")
        name = row["label"] + (f" (held-out {held:.3f})" if pd.notna(held) else "")
        style = {"color": color[row["variant"]], "dash": "dash" if row["variant"] == row["reference"] else None}
        steps = list(range(1, len(smooth[i]) + 1))
        fig.add_scatter(x=steps, y=smooth[i].tolist(), mode="lines", name=name, legendgroup=row["label"],
                        line=style, row=1, col=1)
        ref = rows[(rows["variant"] == rows["reference"]) & (rows["run"] == row["run"])
                   & (rows["params"].map(str) == str(row["params"]))]
        if len(ref) and len(smooth[ref.index[0]]) == len(smooth[i]):
            fig.add_scatter(x=steps, y=(smooth[i] - smooth[ref.index[0]]).tolist(), mode="lines", showlegend=False,
                            legendgroup=row["label"], line=style, row=2, col=1)
    fig.update_yaxes(title_text="loss (nats)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="minus plain (nats)", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title=f"Main head's next-token training loss, moving mean over 1/{SMOOTH} of the steps "
                            "(does MTP hurt or help it?)", template="plotly_white", height=560)
    return fig


def _smooth(curve) -> pd.Series:
    loss = pd.Series(curve, dtype=float)
    return loss.rolling(max(1, len(loss) // SMOOTH), min_periods=1).mean()
