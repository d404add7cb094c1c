"""Figures for a suite that has no figure module (a plug-in, a new technique), drawn from what its run declared
(run.json "suites"): per part, each ratio against the reference and each headline metric, per case and variant,
with the metric's unit on the axis and its meaning in the title, and the cases that did not finish marked at their
case. Reads records only."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from reports.figures import add_not_ok, colors, declared, label_lines, params_label

MAX_PER_PART = 8  # ratios first, then timings, then the rest: a report stays readable with dozens of metrics
HEIGHT = 440  # px
HARNESS = ("energy_j", "avg_power_w", "energy_per_call_j")  # telemetry: every suite has it, none is its headline


def _headline(info: dict, part: str | None, ok: pd.DataFrame) -> list[tuple[str, dict, bool]]:
    """(metric, spec, is a ratio against the reference) to draw for one part, in drawing order."""
    specs = info.get("metrics") or {}
    relative = (info.get("parts") or {}).get(part, {}).get("relative") if part else info.get("relative")
    ratios = [r["name"] for r in relative or []]
    present = [m for m in specs if m in ok and ok[m].notna().any() and not m.startswith("rank_")]
    others = [m for m in present if m not in ratios and m not in HARNESS and specs[m]["kind"] != "info"
              and specs[m].get("direction") is not None]
    others.sort(key=lambda m: (not m.endswith("_ms"), present.index(m)))
    chosen = [(m, specs[m], True) for m in ratios if m in present] + [(m, specs[m], False) for m in others]
    return chosen[:MAX_PER_PART]


def _case(params: dict) -> str:
    return params_label({k: v for k, v in params.items() if k != "part"}) or "(one case)"


def figures(suite: str, rows: pd.DataFrame) -> list:
    info = declared(rows, suite)
    if not info.get("metrics"):
        return []  # a run that declared nothing: the results table says it all
    parts = [p.get("part") if isinstance(p, dict) else None for p in rows["params"]]
    out = []
    for part in dict.fromkeys(parts):
        cases = rows[[q == part for q in parts]]
        ok = cases[cases["status"] == "ok"]
        if ok.empty:
            continue
        case = ok["params"].map(_case)
        color = colors(ok["variant"])
        reference = (info.get("parts") or {}).get(part, {}).get("reference") if part else info.get("reference")
        for metric, spec, is_ratio in _headline(info, part, ok):
            fig = go.Figure()
            for variant, g in ok.assign(case=case).groupby("variant", sort=False):
                fig.add_bar(x=g["case"], y=g[metric], name=str(variant), marker_color=color[variant])
            add_not_ok(fig, cases, case, ok[metric], x=lambda r: _case(r["params"]))
            if is_ratio:
                label_lines(fig, [(1.0, f"reference ({reference})", {"dash": "dot"})], height=HEIGHT)
            unit = f" ({spec['unit']})" if spec.get("unit") else ""
            better = f", {spec['direction']} is better" if spec.get("direction") else ""
            where = f"{suite} · {part}" if part else suite
            fig.update_layout(title=f"{where}: {metric}: {spec.get('meaning') or metric}{better}",
                              xaxis_title="case", yaxis_title=f"{metric}{unit}", barmode="group", height=HEIGHT)
            out.append(fig)
    return out
