"""The nightly dashboard: a static, offline site built from a history store (bench/history.py).

index.html lists the current regressions, the latest run per environment and links one page per suite. A suite page
has, per directional metric, a time series per case (marker symbol per env_id, a labelled vertical line where a
new environment first runs, the rolling baseline with its noise band shaded) and a latest-against-baseline table.
"""

from __future__ import annotations

import html
from pathlib import Path

from bench import history
from reports.html import figure, page, section, table

K_SPREAD = 3.0  # band half-width in robust standard deviations: ~0.3% of stable nights fall outside by chance
MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its standard deviation
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "star", "hexagon", "triangle-down")
KEYS = ["env_id", "suite", "case_id", "metric"]
NO_ENV = "unknown"  # runs without an env_id form one environment of their own


def _series(frame):
    """ok, directional, numeric rows; one value per (series, run): the median if a run holds a case twice."""
    ok = frame[(frame["status"] == "ok") & frame["direction"].notna() & frame["value"].notna()]
    ok = ok.assign(env_id=ok["env_id"].fillna(NO_ENV))
    extra = [c for c in ("gpu", "git_sha", "variant") if c in ok.columns]
    agg = {"value": "median", "timestamp": "min", "direction": "first", **{c: "first" for c in extra}}
    out = ok.groupby(KEYS + ["run_id"], as_index=False, dropna=False).agg(agg)
    return out.sort_values(KEYS + ["timestamp", "run_id"], kind="stable", ignore_index=True)


def _band(earlier: list[float], threshold: float) -> tuple[float, float] | None:
    """(baseline, relative band half-width) from earlier values, None when there is no usable baseline."""
    import numpy as np

    if not earlier:
        return None
    baseline = float(np.median(earlier))
    if baseline == 0:
        return None
    spread = MAD_TO_SIGMA * float(np.median(np.abs(np.asarray(earlier) - baseline))) / abs(baseline)
    return baseline, max(threshold, K_SPREAD * spread)


def _worse(value: float, baseline: float, direction: str) -> float:
    """Relative change with the sign flipped so that positive is worse."""
    change = (value - baseline) / abs(baseline)
    return change if direction == "lower" else -change


def _rolling(values: list[float], direction: str, threshold: float, window: int) -> list[dict | None]:
    """Per point: its baseline, band half-width, band edges and worse() from the up to `window` points before it."""
    out = []
    for i, v in enumerate(values):
        band = _band(values[max(0, i - window):i], threshold)
        if band is None:
            out.append(None)
            continue
        b, half = band
        out.append({"baseline": b, "half": half, "lower": b - half * abs(b), "upper": b + half * abs(b),
                    "bad": _worse(v, b, direction) > half})
    return out


def regressions(frame, threshold: float = 0.05, window: int = 7):
    """Current regressions of a history frame (history.load), one row per (env_id, suite, case_id, metric).

    A series is the ok values of one case and one directional metric on one env_id, in run order; a hardware or
    software change starts a new series, so it is never a regression. Each point v[i] with at least one earlier
    point has, from E = the up to `window` points before it,
        baseline[i] = median(E)
        band[i]     = max(threshold, 3 * 1.4826 * MAD(E) / |baseline[i]|)     (relative half-width of the noise band)
        worse[i]    = (v[i] - baseline[i]) / |baseline[i]|, negated for higher-is-better metrics
    and is bad when worse[i] > band[i]: beyond the threshold in the bad direction and outside the noise band (the
    shaded band of the suite pages). A series is flagged when its last two points are both bad; so one bad night is
    not flagged, a flag clears when the latest point is back inside its band, and a shift that lasts becomes the
    baseline once it fills half the window.
    Columns: suite, case_id, variant, metric, env_id, gpu, direction, baseline and band_pct (of the latest point),
    previous, latest, change_pct (latest against its baseline, signed), n_runs, run_id, timestamp (latest point).
    """
    import pandas as pd

    columns = ["suite", "case_id", "variant", "metric", "env_id", "gpu", "direction", "baseline", "band_pct",
               "previous", "latest", "change_pct", "n_runs", "run_id", "timestamp"]
    rows = []
    for _, s in _series(frame).groupby(KEYS, sort=True, dropna=False):
        values, d = s["value"].tolist(), s["direction"].iloc[-1]
        judged = _rolling(values, d, threshold, window)
        if len(values) < 3 or not (judged[-2] and judged[-2]["bad"] and judged[-1]["bad"]):
            continue
        last, b = s.iloc[-1], judged[-1]["baseline"]
        rows.append({"suite": last["suite"], "case_id": last["case_id"], "variant": last.get("variant"),
                     "metric": last["metric"], "env_id": last["env_id"], "gpu": last.get("gpu"), "direction": d,
                     "baseline": b, "band_pct": 100 * judged[-1]["half"], "previous": values[-2],
                     "latest": values[-1], "change_pct": 100 * (values[-1] - b) / abs(b), "n_runs": len(values),
                     "run_id": last["run_id"], "timestamp": last["timestamp"]})
    return pd.DataFrame(rows, columns=columns)


def _when(ts) -> str:
    return ts.strftime("%Y-%m-%d %H:%M") if hasattr(ts, "strftime") else str(ts)


def _metric_figure(series, runs, flagged: set, metric: str, threshold: float, window: int):
    """One metric of one suite: a line per case, marker symbol per env_id, the rolling band shaded per case."""
    import plotly.graph_objects as go
    from plotly.colors import hex_to_rgb, qualitative

    palette = qualitative.Plotly
    envs = {e: SYMBOLS[i % len(SYMBOLS)] for i, e in enumerate(dict.fromkeys(runs["env_id"]))}
    fig = go.Figure()
    for i, (case, c) in enumerate(series.groupby("case_id", sort=True)):
        colour = palette[i % len(palette)]
        shade = "rgba({}, {}, {}, 0.12)".format(*hex_to_rgb(colour))
        c = c.sort_values(["timestamp", "run_id"], kind="stable")
        for j, (env_id, s) in enumerate(c.groupby("env_id", sort=False)):  # envs in the order they were first run
            x, values = [_when(t) for t in s["timestamp"]], s["value"].tolist()
            judged = _rolling(values, s["direction"].iloc[0], threshold, window)
            hover = [f"{case}<br>{env_id} ({g})<br>run {r} @ {str(sha or '')[:10]}<br>{metric} = {v:.4g}"
                     + (f"<br>baseline {p['baseline']:.4g} ± {100 * p['half']:.3g}%" if p else "")
                     for r, g, sha, v, p in zip(s["run_id"], s["gpu"], s["git_sha"], values, judged)]
            for edge, fill in (("upper", None), ("lower", "tonexty")):
                fig.add_scatter(x=x, y=[p and p[edge] for p in judged], mode="lines", line={"width": 0}, fill=fill,
                                fillcolor=shade, legendgroup=case, showlegend=False, hoverinfo="skip")
            fig.add_scatter(x=x, y=values, mode="lines+markers", name=case.removeprefix(s["suite"].iloc[0] + "/"),
                            legendgroup=case, showlegend=j == 0,
                            line={"color": colour}, marker={"symbol": envs[env_id], "size": 8},
                            text=hover, hovertemplate="%{text}<extra></extra>")
            if (case, env_id) in flagged:
                fig.add_scatter(x=x[-2:], y=values[-2:], mode="markers", legendgroup=case, showlegend=False,
                                marker={"symbol": "circle-open", "size": 18, "color": "#cf222e", "line": {"width": 2}},
                                hoverinfo="skip")
    for run in runs.drop_duplicates("env_id").itertuples():  # legend entries that name each marker symbol
        fig.add_scatter(x=[None], y=[None], mode="markers", name=f"env: {run.gpu} ({run.env_id})",
                        marker={"symbol": envs[run.env_id], "size": 8, "color": "#6e7781"})
    for run in runs.drop_duplicates("env_id").iloc[1:].itertuples():  # a labelled line where a new env first runs
        x = _when(run.timestamp)
        fig.add_shape(type="line", x0=x, x1=x, yref="paper", y0=0, y1=1, line={"dash": "dot", "color": "#6e7781"})
        fig.add_annotation(x=x, yref="paper", y=1.02, showarrow=False, font={"size": 10},
                           text=f"new env: {run.gpu} ({run.env_id})")
    fig.update_layout(title=f"{metric} per case (marker: env; shade: rolling baseline ± noise band; red ring: flagged)",
                      xaxis_title="run started (UTC)", yaxis_title=metric, height=480, margin={"t": 70},
                      legend={"font": {"size": 10}})
    return fig


def _runs(frame):
    """One row per run: its env, when, commit and case counts."""
    frame = frame.assign(env_id=frame["env_id"].fillna(NO_ENV))
    first = frame.drop_duplicates("run_id").set_index("run_id")
    cases = frame.drop_duplicates(["run_id", "case_id"])
    counts = cases.groupby("run_id")["status"].agg(ok=lambda s: int((s == "ok").sum()), total="size")
    runs = first[["timestamp", "env_id", "gpu", "git_sha", "size"]].join(counts).reset_index()
    return runs.sort_values(["timestamp", "run_id"], kind="stable", ignore_index=True)


def _is_timing(metric: str) -> bool:
    return metric.endswith("_ms") or (metric.endswith("_s") and not metric.endswith("_per_s"))


def _suite_page(frame, suite: str, found, threshold: float, window: int) -> str:
    sub = frame[frame["suite"] == suite].assign(env_id=lambda f: f["env_id"].fillna(NO_ENV))
    series, runs = _series(sub), _runs(sub)
    parts = []
    for metric in sorted(series["metric"].unique(), key=lambda m: (not _is_timing(m), m)):  # timings first
        s = series[series["metric"] == metric]
        flagged = set(zip(*(found.loc[found["metric"] == metric, k] for k in ("case_id", "env_id"))))
        rows = []
        for (env_id, case), c in s.groupby(["env_id", "case_id"], sort=True):
            latest = c["value"].iloc[-1]
            p = _rolling(c["value"].tolist(), c["direction"].iloc[0], threshold, window)[-1]
            rows.append({"case": case, "env_id": env_id, "runs": len(c), "baseline": p and p["baseline"],
                         "band ±%": p and 100 * p["half"], "latest": latest,
                         "change %": p and 100 * (latest - p["baseline"]) / abs(p["baseline"]),
                         "flag": "REGRESSION" if (case, env_id) in flagged else ""})
        fig = _metric_figure(s, runs, flagged, metric, threshold, window)
        parts.append(section(metric, figure(fig), table(rows, classes={"flag": "regression"})))
    latest = sub[sub["run_id"].isin(runs.drop_duplicates("env_id", keep="last")["run_id"])]
    failed = latest[latest["status"] != "ok"].drop_duplicates(["run_id", "case_id"])
    if len(failed):
        rows = failed[["env_id", "run_id", "case_id", "status", "error"]].to_dict("records")
        parts.append(section("Not ok in the latest run per env", table(rows, classes={"status": "status"})))
    return page(f"techbench dashboard: {suite}", "\n".join(parts),
                f"{len(runs)} runs; baseline: median of up to {window} earlier runs of the case on the same env_id; "
                f"threshold {100 * threshold:g}%")


def _page_name(suite: str) -> str:
    return "suite-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in suite) + ".html"


def build(store: str | Path, out_dir: str | Path, threshold: float = 0.05, window: int = 7) -> Path:
    """Write the site (index.html and one page per suite) for the history store; returns the index path."""
    frame = history.load(store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = regressions(frame, threshold, window)
    suites = sorted(frame["suite"].dropna().unique())
    for suite in suites:
        text = _suite_page(frame, suite, found[found["suite"] == suite], threshold, window)
        (out / _page_name(suite)).write_text(text, encoding="utf-8")
    if len(found):
        rows = [{"suite": r.suite, "case": r.case_id.removeprefix(f"{r.suite}/"), "metric": r.metric,
                 "env_id": r.env_id, "gpu": r.gpu, "baseline": r.baseline, "latest": r.latest,
                 "change %": r.change_pct, "band ±%": r.band_pct, "latest run": r.run_id} for r in found.itertuples()]
        flags = table(rows, classes={"change %": "regression"})
    else:
        flags = '<p class="muted">No regressions: every series is inside its noise band or back within it.</p>'
    runs = _runs(frame) if len(frame) else None
    latest = [] if runs is None else [
        {"env_id": r.env_id, "gpu": r.gpu, "run": r.run_id, "started (UTC)": _when(r.timestamp),
         "commit": (r.git_sha or "")[:10], "size": r.size, "cases ok": f"{r.ok}/{r.total}"}
        for r in runs.drop_duplicates("env_id", keep="last").sort_values("env_id").itertuples()]
    counts = {s: int((found["suite"] == s).sum()) for s in suites}
    links = "".join(f'<li><a href="{html.escape(_page_name(s))}">{html.escape(s)}</a> '
                    f'({n} regression{"s" * (n != 1)})</li>' for s, n in counts.items())
    body = "\n".join([section("Current regressions", flags),
                      section("Latest run per env", table(latest) if latest else '<p class="muted">No runs yet.</p>'),
                      section("Suites", f"<ul>{links}</ul>")])
    subtitle = (f"{frame['run_id'].nunique()} runs in {store}; a regression is two consecutive runs worse than the "
                f"rolling baseline by more than {100 * threshold:g}% and outside the noise band, on one env_id")
    index = out / "index.html"
    index.write_text(page("techbench dashboard", body, subtitle), encoding="utf-8")
    return index
