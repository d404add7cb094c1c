"""Sampler figures: quality against NFE (log-log) per sampler, one panel per target and model, with the reference's
quality (DDPM at its largest NFE in the run, 1000 steps at quick and full size) and the sampling-noise floor as
labelled lines; quality against wall time; and the table users come for: per sampler, the smallest NFE that matches
the reference: within 10% of its sliced W2, or below the noise floor (exact samples of the same size score up to
mean + 2 sd of the floor there, so the metric cannot rank samplers below it)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports.figures import axis, colors, hover, ok

METRICS = ("nfe", "sample_time_ms", "sliced_w2", "sliced_w2_floor", "mmd", "mode_weight_err", "mean_loglik")
QUALITY = "sliced_w2"
WITHIN = 0.10  # "matches the reference": sliced W2 at most 10% above the reference's
HOVER = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{x:.4g}, " + QUALITY + " %{y:.4g}<br>"
         "<span style='font-family:monospace'>%{customdata[2]}</span><extra>%{fullData.name}</extra>")


def _panels(frame: pd.DataFrame) -> pd.DataFrame:
    rows = ok(frame, QUALITY, "nfe")
    return rows.assign(panel=[f"{p.get('target')} · {p.get('model')} model" for p in rows["params"]])


def reference_quality(rows: pd.DataFrame) -> dict[tuple[str, str], tuple[float, int]]:
    """(run, panel) -> (quality, nfe) of the reference at its largest NFE."""
    ref = rows[rows["variant"] == rows["reference"]].sort_values("nfe")
    return {key: (float(g[QUALITY].iloc[-1]), int(g["nfe"].iloc[-1])) for key, g in ref.groupby(["run", "panel"])}


def noise_floor(rows: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(run, panel) -> mean + 2 sd of what exact samples of the run's size score: the metric's resolution."""
    if "sliced_w2_floor" not in rows:
        return {}
    known = rows[rows["sliced_w2_floor"].notna()]
    sd = known["sliced_w2_floor_sd"].fillna(0) if "sliced_w2_floor_sd" in known else 0
    known = known.assign(_floor=known["sliced_w2_floor"] + 2 * sd)
    return {key: float(g["_floor"].iloc[0]) for key, g in known.groupby(["run", "panel"])}


def nfe_to_match(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, panel, variant): the smallest NFE whose quality is within WITHIN of the reference's or below
    the noise floor, or None where no NFE in the run gets there, beside the best quality reached."""
    rows = _panels(frame)
    refs, floors = reference_quality(rows), noise_floor(rows)
    out = []
    for (run, panel, variant), g in rows.groupby(["run", "panel", "variant"], sort=False):
        if (run, panel) not in refs:
            continue
        ref, ref_nfe = refs[(run, panel)]
        floor = floors.get((run, panel))
        bar = max((1 + WITHIN) * ref, floor or 0.0)
        hits = g[g[QUALITY] <= bar].sort_values("nfe")
        out.append({"run": run, "panel": panel, "variant": variant, "nfe_to_match": None if hits.empty else
                    int(hits["nfe"].iloc[0]), "best": float(g[QUALITY].min()), "reference": ref,
                    "reference_nfe": ref_nfe, "floor": floor})
    return pd.DataFrame(out, columns=["run", "panel", "variant", "nfe_to_match", "best", "reference", "reference_nfe",
                                      "floor"])


def figures(frame: pd.DataFrame) -> list:
    rows = _panels(frame)
    if rows.empty:
        return []
    return [_against(rows, "nfe", "model calls per sample (NFE)", "Sample quality against NFE"),
            _against(rows, "sample_time_ms", axis(rows, "sample_time_ms", "time per batch"),
                     "Sample quality against wall time"),
            _table(nfe_to_match(frame))]


def _against(rows: pd.DataFrame, x: str, x_title: str, title: str):
    panels = list(dict.fromkeys(rows["panel"]))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.06)
    color, runs = colors(rows["variant"]), list(dict.fromkeys(rows["run"]))
    refs, floors = reference_quality(rows), noise_floor(rows)
    for col, panel in enumerate(panels, start=1):
        part = rows[rows["panel"] == panel]
        for (variant, run), v in part.groupby(["variant", "run"], sort=False):
            v = v.sort_values(x)
            dash = ("solid", "dot", "dash", "dashdot")[runs.index(run) % 4]
            fig.add_scatter(x=v[x].tolist(), y=v[QUALITY].tolist(), mode="lines+markers",
                            name=variant if len(runs) == 1 else f"{variant} ({run})", legendgroup=variant,
                            showlegend=col == 1, line={"color": color[variant], "dash": dash},
                            marker={"color": color[variant], "size": 7}, customdata=hover(v), hovertemplate=HOVER,
                            row=1, col=col)
        for run in runs:
            floor = floors.get((run, panel))
            # the upper line's label above it, the lower's below: DDPM can land under the floor at small sizes
            ddpm_on_top = (run, panel) not in refs or floor is None or refs[(run, panel)][0] >= floor
            if (run, panel) in refs:
                q, nfe = refs[(run, panel)]
                fig.add_hline(y=q, line_dash="dash", line_color="#6e7781", row=1, col=col,
                              annotation_text=f"DDPM {nfe} steps",
                              annotation_position="top right" if ddpm_on_top else "bottom right")
            if floor is not None:
                fig.add_hline(y=floor, line_dash="dot", line_color="#9a6700", row=1, col=col,
                              annotation_text="exact samples (noise floor)",
                              annotation_position="bottom right" if ddpm_on_top else "top right")
        fig.update_xaxes(type="log", title_text=x_title, row=1, col=col)
    fig.update_yaxes(type="log", title_text=f"{QUALITY} to the target (lower is better)", row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", height=460, legend={"title": "sampler"})
    return fig


def _table(match: pd.DataFrame):
    match = match.sort_values(["run", "panel", "nfe_to_match"], na_position="last")
    cells = [match["panel"].tolist(), match["variant"].tolist(),
             ["not reached" if pd.isna(n) else str(int(n)) for n in match["nfe_to_match"]],
             [f"{b:.4f}" for b in match["best"]],
             [f"{r:.4f} at {n}" for r, n in zip(match["reference"], match["reference_nfe"])],
             ["" if pd.isna(f) else f"{f:.4f}" for f in match["floor"]]]
    header = ["target · model", "sampler", f"NFE to match DDPM (within {WITHIN:.0%}, or below the floor)",
              f"best {QUALITY}", f"DDPM {QUALITY} at NFE", "noise floor (exact samples, mean + 2 sd)"]
    if match["run"].nunique() > 1:
        header, cells = ["run", *header], [match["run"].tolist(), *cells]
    fig = go.Figure(go.Table(header={"values": header, "align": "left"}, cells={"values": cells, "align": "left"}))
    fig.update_layout(title=f"Steps for quality: the fewest model calls that match DDPM's {QUALITY} within "
                            f"{WITHIN:.0%}", height=120 + 24 * len(match), template="plotly_white")
    return fig
