"""The page of a `bench plan` (`bench plan ... -o plan.html`): per suite, predicted memory per case against the GPU's
capacity line beside the roofline bound per case, then the table of every case with its parts or its reason.

Cases are rows of horizontal bars, labelled by their variant and the params that differ between the suite's cases
(bench.labels; the params they share are said once, above the chart): a full plan's case ids run to 150
characters, which as column labels left a strip of plot under a wall of rotated text. A suite with parts gets a
chart per part. It reads the plan's records only (the JSON objects `bench plan --json` prints under "predictions"):
no torch.
"""

from __future__ import annotations

import html
from pathlib import Path

from bench.atomic import atomic_write_text
from bench.labels import case_labels, group_of
from reports.html import figure, page, section, table

GIB = 1 << 30
PARTS = ("parameters", "gradients", "optimizer", "activations", "inputs", "transient")
ROW_PX = 22  # a case's row in a chart


def write_plan_page(records: list[dict], summary: dict, out: str | Path) -> Path:
    """Writes the page of a plan's records to `out` and returns its path."""
    return atomic_write_text(out, render(records, summary))


def render(records: list[dict], summary: dict) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    where = summary.get("gpu") or "this CPU"
    groups = {}
    for r in ok:  # in the plan's order
        groups.setdefault(group_of(r["suite"], r["params"]), []).append(r)
    parts = [_suite(group, rows, summary) for group, rows in groups.items()]
    rows = [{"case": r["case_id"], "status": r["status"],
             "peak GiB": None if r.get("peak_bytes") is None else r["peak_bytes"] / GIB,
             "reserved GiB": None if r.get("reserved_bytes") is None else r["reserved_bytes"] / GIB,
             "host GiB": None if r.get("host_bytes") is None else r["host_bytes"] / GIB,
             **{f"{p} GiB": r["parts"][p] / GIB for p in PARTS if p in r.get("parts", {})},
             "fits": r.get("fits"), "TFLOP": None if r.get("flops") is None else r["flops"] / 1e12,
             "roofline ms": r.get("roofline_ms"), "attention": ", ".join(r.get("attention") or []) or None,
             "reason": r.get("reason")} for r in records]
    order = ["case", "status", "peak GiB", "reserved GiB", "host GiB", *(f"{p} GiB" for p in PARTS), "fits", "TFLOP",
             "roofline ms", "attention", "reason"]  # whichever case comes first, not-plannable ones have no parts
    columns = [c for c in order if any(r.get(c) is not None for r in rows)]
    parts.append(section("Every case", table(rows, columns, classes={"case": "case-id", "status": "status",
                                                                     "reason": "reason"})))
    subtitle = (f"{summary.get('cases', len(records))} cases at size {summary.get('size')}, planned on the meta "
                f"device for {where}; fits = peak + headroom (1 GiB + 10% of the peak) <= memory")
    return page(f"bench plan: {where}", "\n".join(parts), subtitle)


def labels(rows: list[dict]) -> tuple[list[str], dict]:
    """(a short label per case: its variant and the params that differ between `rows`, the params all share)."""
    return case_labels([(r["variant"], r["params"]) for r in rows])


def _suite(group: str, rows: list[dict], summary: dict) -> str:
    from plotly.subplots import make_subplots

    names, shared = labels(rows)
    names = [html.escape(n) for n in names]  # plotly draws labels as HTML: x<b> would read as x
    roofline = any(r.get("roofline_ms") is not None for r in rows)
    fig = make_subplots(rows=1, cols=2 if roofline else 1, shared_yaxes=True, horizontal_spacing=0.02,
                        column_widths=[0.62, 0.38] if roofline else None,
                        subplot_titles=["Predicted memory per case, GiB (parts stacked: not all live at once)",
                                        *(["Roofline lower bound on step time, ms"] if roofline else [])])
    hover = [html.escape(r["case_id"]) for r in rows]
    for part in PARTS:
        fig.add_bar(name=part, y=names, x=[r["parts"].get(part, 0) / GIB for r in rows], orientation="h",
                    hovertext=hover, legendgroup=part, row=1, col=1)
    marks = [("predicted peak", [r["peak_bytes"] for r in rows], "line-ns-open", 16, "black"),
             ("peak + headroom", [r["peak_bytes"] + (r.get("headroom_bytes") or 0) for r in rows], "line-ns-open", 16,
              "grey")]
    if any(r.get("reserved_bytes") is not None for r in rows):  # a CUDA target: the allocator's segments, modelled
        marks.append(("reserved (caching allocator)", [r.get("reserved_bytes") for r in rows], "circle-open", 9,
                      "purple"))
    for name, values, symbol, size, color in marks:
        fig.add_scatter(name=name, y=names, x=[None if v is None else v / GIB for v in values], mode="markers",
                        hovertext=hover, marker={"symbol": symbol, "size": size, "color": color}, row=1, col=1)
    capacity = summary.get("capacity_bytes")
    if capacity:
        fig.add_vline(x=capacity / GIB, line_dash="dash", line_color="red", row=1, col=1,
                      annotation_text=f"{summary.get('gpu') or 'memory'}: {capacity / GIB:.1f} GiB")
    if roofline:
        fig.add_bar(name="roofline bound", y=names, x=[r.get("roofline_ms") for r in rows], orientation="h",
                    hovertext=hover, marker_color="#4c78a8", row=1, col=2)
        fig.update_xaxes(type="log", title_text="ms (log)", row=1, col=2)
    fig.update_xaxes(title_text="GiB", row=1, col=1)
    fig.update_yaxes(autorange="reversed", automargin=True)  # the plan's first case on top
    plot_px = max(ROW_PX * len(rows), 120)  # the legend goes below the axis titles, a fixed 70 px under the plot
    fig.update_layout(barmode="stack", height=plot_px + 60 + 130, margin={"t": 60, "b": 130}, legend_orientation="h",
                      legend={"y": -70 / plot_px, "yanchor": "top"})
    common = ", ".join(f"{k}={v}" for k, v in shared.items())
    note = f'<p class="muted">every case here: {html.escape(common)}</p>' if common else ""
    return section(f"{group}: memory and roofline", note, figure(fig))
