"""The page of a `bench plan` (`bench plan ... -o plan.html`): predicted memory per case against the GPU's capacity
line, the roofline bound per case, and the table of every case with its parts or its reason.

It reads the plan's records only (the JSON objects `bench plan --json` prints under "predictions"): no torch.
"""

from __future__ import annotations

from pathlib import Path

from bench.atomic import atomic_write_text
from reports.html import figure, page, section, table

GIB = 1 << 30
PARTS = ("parameters", "gradients", "optimizer", "activations", "inputs", "transient")


def write_plan_page(records: list[dict], summary: dict, out: str | Path) -> Path:
    """Writes the page of a plan's records to `out` and returns its path."""
    return atomic_write_text(out, render(records, summary))


def _label(r: dict) -> str:
    params = ",".join(f"{k}={v}" for k, v in sorted(r["params"].items()) if k != "dtype")
    return f"{r['suite']}/{r['variant']}<br>{params}"


def render(records: list[dict], summary: dict) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    where = summary.get("gpu") or "this CPU"
    parts = [_memory(ok, summary)] if ok else []
    if any(r.get("roofline_ms") is not None for r in ok):
        parts.append(_roofline(ok))
    rows = [{"case": r["case_id"], "status": r["status"],
             "peak GiB": None if r.get("peak_bytes") is None else r["peak_bytes"] / GIB,
             "reserved GiB": None if r.get("reserved_bytes") is None else r["reserved_bytes"] / GIB,
             **{f"{p} GiB": r["parts"][p] / GIB for p in PARTS if p in r.get("parts", {})},
             "fits": r.get("fits"), "TFLOP": None if r.get("flops") is None else r["flops"] / 1e12,
             "roofline ms": r.get("roofline_ms"), "attention": ", ".join(r.get("attention") or []) or None,
             "reason": r.get("reason")} for r in records]
    parts.append(section("Every case", table(rows, classes={"status": "status", "reason": "reason"})))
    subtitle = (f"{summary.get('cases', len(records))} cases at size {summary.get('size')}, planned on the meta "
                f"device for {where}; fits = peak + headroom (1 GiB + 10% of the peak) <= memory")
    return page(f"bench plan: {where}", "\n".join(parts), subtitle)


def _memory(ok: list[dict], summary: dict) -> str:
    import plotly.graph_objects as go

    labels = [_label(r) for r in ok]
    fig = go.Figure()
    for part in PARTS:
        fig.add_bar(name=part, x=labels, y=[r["parts"].get(part, 0) / GIB for r in ok])
    fig.add_scatter(name="predicted peak", x=labels, y=[r["peak_bytes"] / GIB for r in ok], mode="markers",
                    marker={"symbol": "line-ew-open", "size": 18, "color": "black"})
    fig.add_scatter(name="peak + headroom", x=labels, y=[(r["peak_bytes"] + (r.get("headroom_bytes") or 0)) / GIB
                                                         for r in ok], mode="markers",
                    marker={"symbol": "line-ew-open", "size": 18, "color": "grey"})
    if any(r.get("reserved_bytes") is not None for r in ok):  # a CUDA target: the allocator's segments, modelled
        fig.add_scatter(name="reserved (caching allocator)", x=labels, mode="markers",
                        y=[None if r.get("reserved_bytes") is None else r["reserved_bytes"] / GIB for r in ok],
                        marker={"symbol": "circle-open", "size": 9, "color": "purple"})
    capacity = summary.get("capacity_bytes")
    if capacity:
        fig.add_hline(y=capacity / GIB, line_dash="dash", line_color="red",
                      annotation_text=f"{summary.get('gpu') or 'memory'}: {capacity / GIB:.1f} GiB")
    fig.update_layout(barmode="stack", yaxis_title="GiB", height=520, legend_orientation="h",
                      title="Predicted memory per case (parts stacked: they need not be live at once)")
    return section("Memory", figure(fig))


def _roofline(ok: list[dict]) -> str:
    import plotly.graph_objects as go

    rows = [r for r in ok if r.get("roofline_ms") is not None]
    fig = go.Figure(go.Bar(x=[_label(r) for r in rows], y=[r["roofline_ms"] for r in rows], name="roofline bound"))
    fig.update_layout(yaxis_type="log", yaxis_title="ms (log)", height=460,
                      title="Roofline lower bound on step time: max(FLOPs / peak, bytes moved / bandwidth)")
    return section("Roofline", figure(fig))
