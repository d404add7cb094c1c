"""The nightly dashboard: a static, offline site built from a history store (bench/history.py).

index.html lists the current regressions (those of series that stopped running apart, as stale), the cases failing in
the latest night (reports/failing.py), the latest run per environment, and links one page per suite. A suite page has,
per directional metric, a time series per case (marker symbol per environment, a labelled vertical line where a new one
first runs, the baseline with its noise band shaded, the flagged points ringed, contended points hollow: judged against
nothing, see reports/regressions.py) and a latest-against-baseline table (a series with no run in the latest night says
so). Points sit at each run's start to the second: nightly runs are a day apart, but two runs made by hand a minute
apart must not share an x. An environment is an (env_id, device, gpu) triple: CPU and CUDA runs on one machine share an
env_id, never a series, and so do its H200 and its H100 (GPUs of one model share one: reports/regressions.py).
"""

from __future__ import annotations

import html
from pathlib import Path

from bench import history
from bench.atomic import atomic_files
from reports import failing as fail
from reports import regressions as rule
from reports.html import CSS, figure, number, page, section, table
from reports.regressions import ENV, STALE_DAYS, regressions  # noqa: F401 - the rule, re-exported

SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "star", "hexagon", "triangle-down")
# Tick labels by zoom (dtick in ms): seconds only once ticks are under a minute apart, never plotly's fractions of a
# second ("00:10:59.9995"), and the date once ticks are a day or more apart.
TICK_FORMATS = [{"dtickrange": [None, 60_000], "value": "%H:%M:%S<br>%b %d"},
                {"dtickrange": [60_000, 86_400_000], "value": "%H:%M<br>%b %d, %Y"},
                {"dtickrange": [86_400_000, None], "value": "%b %d<br>%Y"}]


def _when(ts) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if hasattr(ts, "strftime") else str(ts)


def _metric_figure(items: list, runs, flagged: dict, metric: str):
    """One metric of one suite: a line per series, colour per case, marker symbol per env, its band shaded."""
    import plotly.graph_objects as go
    from plotly.colors import hex_to_rgb, qualitative

    palette = qualitative.Plotly
    envs = {e: SYMBOLS[i % len(SYMBOLS)] for i, e in enumerate(dict.fromkeys(zip(*(runs[k] for k in ENV))))}
    colours = {c: palette[i % len(palette)] for i, c in enumerate(sorted({s["case_id"].iloc[0] for s, _ in items}))}
    every = [v for s, _ in items for v in s["value"]]
    # one outlier run squashes every other line on a linear axis; timings are positive and span sizes
    log = min(every) > 0 and (_is_timing(metric) or max(every) > 10 * min(every))
    floor = min(every) / 2  # where a band edge at or below 0 is drawn on a log axis
    fig, shown = go.Figure(), set()
    several = len({s["threads"].iloc[0] for s, _ in items}) > 1  # a series per CPU thread count, named
    for s, judged in sorted(items, key=lambda it: (it[0]["case_id"].iloc[0], it[0]["timestamp"].iloc[0])):
        case, env = s["case_id"].iloc[0], tuple(s[k].iloc[0] for k in ENV)
        colour = colours[case]
        x, values = [_when(t) for t in s["timestamp"]], s["value"].tolist()
        away, why = rule.not_judged(s), s["contended_reason"].tolist()
        lib = f" ({s['library'].iloc[0]})" if s["library"].iloc[0] else ""  # a series per version of a library
        lib += f" ({s['threads'].iloc[0]} threads)" if several and s["threads"].iloc[0] else ""
        hover = [f"{case}{html.escape(lib)}<br>"
                 f"{env[0]} {env[1]} ({g})<br>run {r} @ {str(sha or '')[:10]}<br>{metric} = {number(v)}"
                 + (f"<br>baseline {number(p['baseline'])} ± {100 * p['half']:.3g}%" if p else "")
                 + (f"<br>older baseline {number(p['old'])} ± {100 * p['old_half']:.3g}%" if p and p["old"] else "")
                 + (f"<br>bad ({p['kind']})" if p and p["kind"] else "")
                 + (f"<br>contended, not judged: {html.escape(str(w or 'flagged contended'))}" if a else "")
                 for r, g, sha, v, p, a, w in zip(s["run_id"], s["gpu"], s["git_sha"], values, judged, away, why)]
        for edge, fill in (("upper", None), ("lower", "tonexty")):
            y = [p and (max(p[edge], floor) if log else p[edge]) for p in judged]
            fig.add_scatter(x=x, y=y, mode="lines", line={"width": 0}, fill=fill, legendgroup=case, showlegend=False,
                            fillcolor="rgba({}, {}, {}, 0.12)".format(*hex_to_rgb(colour)), hoverinfo="skip")
        fig.add_scatter(x=x, y=values, mode="lines+markers", name=case.removeprefix(s["suite"].iloc[0] + "/") + lib,
                        legendgroup=case, showlegend=(case, lib) not in shown, line={"color": colour},
                        marker={"symbol": [envs.get(env, "circle") + "-open" * bool(a) for a in away], "size": 8},
                        text=hover,
                        hovertemplate="%{text}<extra></extra>")
        shown.add((case, lib))
        bad = rule.flagged(judged, s) if (case, *env, s["library"].iloc[0], s["threads"].iloc[0]) in flagged else []
        if bad:  # ring the whole bad run, not only the two points that raised the flag
            fig.add_scatter(x=[x[i] for i in bad], y=[values[i] for i in bad], mode="markers", legendgroup=case,
                            showlegend=False,
                            marker={"symbol": "circle-open", "size": 18, "color": "#cf222e", "line": {"width": 2}},
                            hoverinfo="skip")
    first = runs.drop_duplicates(ENV)
    for run in first.itertuples():  # legend entries that name each marker symbol
        fig.add_scatter(x=[None], y=[None], mode="markers", name=f"env: {run.gpu} ({run.env_id}, {run.device})",
                        marker={"symbol": envs[(run.env_id, run.device, run.gpu)], "size": 8, "color": "#6e7781"})
    for run in first.iloc[1:].itertuples():  # a labelled line where a new env first runs
        x = _when(run.timestamp)
        fig.add_shape(type="line", x0=x, x1=x, yref="paper", y0=0, y1=1, line={"dash": "dot", "color": "#6e7781"})
        fig.add_annotation(x=x, yref="paper", y=1.02, showarrow=False, font={"size": 10},
                           text=f"new env: {run.gpu} ({run.env_id}, {run.device})")
    fig.update_layout(title=f"{metric} per case (marker: env; hollow: contended, not judged; shade: baseline ± "
                            "noise band; red ring: flagged)",
                      xaxis={"title": {"text": "run started (UTC)"}, "type": "date", "tickformatstops": TICK_FORMATS,
                             **_padded(runs["timestamp"])},
                      yaxis_title=metric + (" (log)" if log else ""),
                      yaxis_type="log" if log else "linear", height=480, margin={"t": 70},
                      legend={"font": {"size": 10}})
    return fig


def _padded(times) -> dict:
    """An x range a minute wide around runs that span less: plotly would tick a lone run by the millisecond."""
    import pandas as pd

    start, end = times.min(), times.max()
    if not len(times) or end - start >= pd.Timedelta(minutes=1):
        return {}
    pad = (pd.Timedelta(minutes=1) - (end - start)) / 2
    return {"range": [_when(start - pad), _when(end + pad)]}


def _runs(frame):
    """One row per run and model of GPU that measured its cases (a merge of shards on an H200 and an H100 of one
    machine has two): its env, when, commit and case counts."""
    frame = rule.envs(frame)
    first = frame.drop_duplicates(["run_id", "gpu"]).set_index(["run_id", "gpu"])
    cases = frame.drop_duplicates(["run_id", "case_id"])
    counts = cases.groupby(["run_id", "gpu"])["status"].agg(ok=lambda s: int((s == "ok").sum()), total="size")
    runs = first[["timestamp", "env_id", "device", "git_sha", "size"]].join(counts).reset_index()
    return runs.sort_values(["timestamp", "run_id"], kind="stable", ignore_index=True)


def _is_timing(metric: str) -> bool:
    return metric.endswith("_ms") or (metric.endswith("_s") and not metric.endswith("_per_s"))


def _suite_page(frame, suite: str, judged: list, found, threshold: float, window: int, tonight: dict) -> str:
    sub = rule.envs(frame[frame["suite"] == suite])
    runs = _runs(sub)
    parts = []
    for metric in sorted({s["metric"].iloc[0] for s, _ in judged}, key=lambda m: (not _is_timing(m), m)):
        items = [(s, j) for s, j in judged if s["metric"].iloc[0] == metric]
        here = found[found["metric"] == metric]
        flags = {(r.case_id, r.env_id, r.device, r.gpu, r.library, r.threads): r for r in here.itertuples()}
        rows, libraries = [], any(s["library"].iloc[0] for s, _ in items)
        threads = len({s["threads"].iloc[0] for s, _ in items}) > 1
        order = ("env_id", "case_id", "library", "threads")
        for s, j in sorted(items, key=lambda it: tuple(it[0][k].iloc[0] for k in order)):
            key = tuple(s[k].iloc[0] for k in ("case_id", "env_id", "device", "gpu", "library", "threads"))
            latest, p = s["value"].iloc[-1], j[-1]
            row = {"case": key[0], **({"library": key[4]} if libraries else {}),
                   **({"threads": key[5]} if threads else {}), "env_id": key[1], "device": key[2], "gpu": key[3],
                   "runs": len(s), "baseline": p and p["baseline"],
                   "band ±%": p and 100 * p["half"], "latest": latest,
                   "change %": p and rule.change_pct(latest, p["baseline"]), "flag": ""}
            if s["metric_kind"].iloc[-1] == "exact" and not s["exactly"].iloc[-1]:
                row["flag"] = (f"exact, but runs of commit {rule.varied_at(s)[:10]} differ: judged against the noise "
                               "band")
            if rule.not_judged(s)[-1]:
                row["flag"] = f"latest contended, not judged: {s['contended_reason'].iloc[-1] or 'flagged contended'}"
            if key in flags:  # the baseline and band the flag was raised against (a drift's is the older median)
                f = flags[key]
                row.update({"baseline": f.baseline, "band ±%": f.band_pct, "change %": f.change_pct,
                            "flag": f"follows {f.follows} ({f.kind}, {f.bad_runs} runs)" if fail.text(f.follows)
                            else f"REGRESSION ({f.kind}, {f.bad_runs} runs)"})
            if not _in_latest(s, tonight):  # failed tonight, or no longer run: its latest is an older night's
                gone = f"not in the latest night (latest: run {s['run_id'].iloc[-1]})"
                row["flag"] = f"{row['flag']}; {gone}" if key in flags else gone
            rows.append(row)
        fig = _metric_figure(items, runs, {k: f.bad_runs for k, f in flags.items()}, metric)
        parts.append(section(metric, figure(fig), table(rows, classes={"flag": "regression"})))
    latest = sub[sub["run_id"].isin(runs.drop_duplicates(ENV, keep="last")["run_id"])]
    failed = latest[latest["status"] != "ok"].drop_duplicates(["run_id", "case_id"])
    if len(failed):
        rows = failed[[*ENV, "run_id", "case_id", "status", "error"]].to_dict("records")
        parts.append(section("Not ok in the latest run per env", table(rows, classes={"status": "status"})))
    return page(f"techbench dashboard: {suite}", "\n".join(parts),
                f"{runs['run_id'].nunique()} runs; baseline: median of up to {window} earlier runs of the case on the "
                f"same env_id, device and GPU model that were not themselves flagged bad; threshold "
                f"{100 * threshold:g}%; an exact metric (bytes, FLOPs, a seeded quality) is held to its latest good "
                "value, with no band")


def _page_name(suite: str) -> str:
    return "suite-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in suite) + ".html"


def _plain_page(title: str, body: str, subtitle: str) -> str:
    """reports.html.page without plotly.js (4.8 MB), for a page that has no figure."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{html.escape(title)}</h1><p class="muted">{html.escape(subtitle)}</p>\n{body}\n'
            '</body></html>\n')


def _grouped(found):
    """The flags with each one that follows another (a rate that moved with its timing) right after the one it
    follows."""
    if not len(found):
        return found
    key = [found[k] for k in ("env_id", "device", "gpu", "suite", "case_id", "library", "threads")]
    root = found["follows"].where(found["follows"].notna(), found["metric"])
    order = found.assign(_root=root, _follower=found["follows"].notna(), _series=list(zip(*key)))
    return order.sort_values(["_series", "_root", "_follower"], kind="stable").drop(
        columns=["_root", "_follower", "_series"])


def _latest_contended(judged: list, latest: dict) -> list[dict]:
    """Per run and suite, the series whose latest point was contended in the latest night (`_in_latest`), and so
    judged against nothing: how many, and why (the first reason)."""
    rows: dict = {}
    for s, _ in judged:
        if not rule.not_judged(s)[-1] or not _in_latest(s, latest):
            continue
        last = s.iloc[-1]
        row = rows.setdefault((last["run_id"], last["suite"]), {
            "suite": last["suite"], "env_id": last["env_id"], "device": last["device"], "run": last["run_id"],
            "series": 0, "why": last["contended_reason"] or "flagged contended"})
        row["series"] += 1
    return [rows[k] for k in sorted(rows)]


def _latest_night(frame) -> dict[tuple, str]:
    """(env_id, device, gpu, case_id) -> the run of the case's latest record on that environment (whatever its status: a
    case that failed ran), for the cases whose latest record is of the latest night: within STALE_DAYS of the store's
    newest run. Each environment has its own latest run: machines sharing a store start their nights hours apart,
    and one that stopped running days ago has no latest night. A case's own, not its environment's: a run of one
    suite by hand, or a shard of a sweep, does not take the others' latest night from them."""
    if frame.empty:
        return {}
    frame = rule.envs(frame)
    newest = frame["timestamp"].max()
    runs = frame.drop_duplicates(["run_id", "case_id"]).sort_values(["timestamp", "run_id"], kind="stable")
    last = runs.drop_duplicates([*ENV, "case_id"], keep="last")
    last = last[(newest - last["timestamp"]).dt.total_seconds() <= rule.STALE_DAYS * 86400]
    return dict(zip(zip(*(last[k] for k in [*ENV, "case_id"])), last["run_id"]))


def _in_latest(series, latest: dict) -> bool:
    """The series has a point in the latest night: its last point is of its case's latest run on its environment
    (`_latest_night`). A series whose case failed or was contended before that run had its last point a night
    earlier: it did not run in the latest night, however close to the newest run that point is."""
    last = series.iloc[-1]
    return latest.get(tuple(last[k] for k in [*ENV, "case_id"])) == last["run_id"]


def _unflagged(judged: list, latest: dict, disturbed: list[dict]) -> str:
    """What the index says where nothing is flagged: how many of the latest night's series were judged, and how many
    could not be (too young for a baseline, or contended), never "all inside the band" of series judged against
    nothing."""
    mine = [(s, j) for s, j in judged if _in_latest(s, latest) and not rule.not_judged(s)[-1]]
    n = sum(j[-1] is not None for _, j in mine)
    young = len(mine) - n
    contended = sum(r["series"] for r in disturbed)
    too_young = (f"{young} series {'has' if young == 1 else 'have'} too few earlier runs for a baseline (a measured "
                 f"series is judged from its run {rule.MIN_BASELINE + 1}, an exact one from its second)")
    if not mine and not contended:
        return '<p class="muted">Nothing judged: the latest night recorded no value to judge (see its cases).</p>'
    if not n:
        return (f'<p class="muted">Nothing judged in the latest night yet: {too_young}'
                + (f"; {contended} contended (below)" if contended else "") + ". Add runs.</p>")
    return (f'<p class="muted">No regressions among the {n} series judged in the latest night'
            + (f"; {too_young}" if young else "") + (f"; {contended} contended, not judged (below)" if contended
                                                     else "") + ".</p>")


def _flag_rows(found) -> list[dict]:
    libraries = bool(found["library"].astype(bool).any())  # a column only where some flag is of a library's variant
    following = bool(found["follows"].notna().any())
    threads = bool(found["threads"].astype(bool).any())  # the CPU thread count its series ran at; none on a GPU
    return [{"suite": r.suite, "case": r.case_id.removeprefix(f"{r.suite}/"),
             **({"library": r.library} if libraries else {}), "metric": r.metric,
             **({"threads": r.threads} if threads else {}),
             **({"follows": fail.text(r.follows)} if following else {}), "kind": r.kind,
             "env_id": r.env_id, "device": r.device, "gpu": r.gpu, "baseline": r.baseline, "latest": r.latest,
             "change %": r.change_pct, "band ±%": r.band_pct, "bad runs": r.bad_runs,
             "age (days)": round(r.age_days, 1), "latest run": r.run_id} for r in found.itertuples()]


def build(store: str | Path, out_dir: str | Path, threshold: float = 0.05, window: int = 7, said=None) -> Path:
    """Write the site (index.html and one page per suite) for the history store; returns the index path. The pages
    are renamed into `out_dir` only once every one is written: a failure (OutputError) leaves the earlier site.
    `said(line)`, if given, is told what the index says in one line (current regressions, series a contended latest
    night left unjudged), for a nightly log that shows it beside compare's verdict."""
    rule.check(threshold, window)
    runs = Path(store) / history.RUNS
    if not runs.is_dir():
        raise ValueError(f"{store} is not a history store (no {history.RUNS}/ folder); "
                         "fill one with `bench history add RUN --store DIR`")
    if not any(runs.glob("*.parquet")) and any(runs.glob("*/run.json")):  # `bench run`'s default runs/ folder
        raise ValueError(f"{store} is not a history store: its {history.RUNS}/ holds run directories, not the .parquet "
                         f"files of one; fill a store with `bench history add RUN --store DIR` and draw DIR")
    frame = history.load(store)
    with atomic_files(out_dir) as put:
        return _site(frame, store, put, threshold, window, said)


def _site(frame, store, put, threshold: float, window: int, said=None) -> Path:
    """Each page of the site handed to put(name, html); returns the index's path."""
    judged = rule.judged(frame, threshold, window)
    newest = frame["timestamp"].max()
    found = rule.flags(judged, newest)
    suites = sorted(frame["suite"].dropna().unique())
    latest_night = _latest_night(frame)
    for suite in suites:
        text = _suite_page(frame, suite, [(s, j) for s, j in judged if s["suite"].iloc[0] == suite],
                           found[found["suite"] == suite], threshold, window, latest_night)
        put(_page_name(suite), text)
    found = _grouped(found)
    current, stale = found[~found["stale"].astype(bool)], found[found["stale"].astype(bool)]
    disturbed = _latest_contended(judged, latest_night)
    flags = table(_flag_rows(current), classes={"change %": "regression"}) if len(current) else (
        '<p class="muted">No runs yet: nothing judged.</p>' if frame.empty
        else _unflagged(judged, latest_night, disturbed))
    if disturbed:  # a contended night is no clean one: what it could not show is said beside the flags
        flags += section("Contended in the latest night: not judged", table(disturbed), level=3)
    if current["follows"].notna().any():
        flags = ('<p class="muted">A rate, TFLOP/s or % of peak that moved with the timing it is computed from '
                 "follows it (listed under it, not counted as a regression of its own).</p>" + flags)
    parts = [section("Current regressions", flags)]
    failing, still = fail.failing(frame, latest_night)
    if failing:  # a case that fails has no value for a series to judge: listed here, or no page would say it
        parts.append(section("Newly failing in the latest run (ok in the run before it that ran it)",
                             table(failing, classes={"status": "status"})))
    if still:
        parts.append(section("Still failing in the latest run (and the run before it that ran it; ok in an earlier "
                             "run)", table(still, classes={"status": "status"})))
    if len(stale):
        parts.append(section(f"Stale: flagged series that missed the latest night (last run over {STALE_DAYS:g} day "
                             "before the newest run of the store)", table(_flag_rows(stale))))
    runs = _runs(frame) if len(frame) else None
    latest = [] if runs is None else [
        {"env_id": r.env_id, "device": r.device, "gpu": r.gpu, "run": r.run_id, "started (UTC)": _when(r.timestamp),
         "age (days)": round((newest - r.timestamp).total_seconds() / 86400, 1), "commit": (r.git_sha or "")[:10],
         "size": r.size, "cases ok": f"{r.ok}/{r.total}"}
        for r in runs.drop_duplicates(ENV, keep="last").sort_values(ENV).itertuples()]
    links = ""
    for s in suites:
        mine = current[current["suite"] == s]
        n, f = int(mine["follows"].isna().sum()), int(mine["follows"].notna().sum())
        k = int(((stale["suite"] == s) & stale["follows"].isna()).sum())
        down, broken = sum(r["suite"] == s for r in failing), sum(r["suite"] == s for r in still)
        links += (f'<li><a href="{html.escape(_page_name(s))}">{html.escape(s)}</a> '
                  f'({n} regression{"s" * (n != 1)}{f", {f} following" if f else ""}{f", {k} stale" if k else ""}'
                  f'{f", {down} newly failing" if down else ""}{f", {broken} still failing" if broken else ""})</li>')
    parts += [section("Latest run per env", table(latest) if latest else '<p class="muted">No runs yet.</p>'),
              section("Suites", f"<ul>{links}</ul>")]
    subtitle = (f"{frame['run_id'].nunique()} runs in history store {Path(store).resolve().name}; a regression is "
                f"two consecutive runs (from a series' fourth) worse than the baseline of earlier good runs on one "
                f"env_id, device and GPU model: by more "
                f"than {100 * threshold:g}% and outside the noise band (step), or by more than {200 * threshold:g}% "
                f"against runs over {window} back (drift); for an exact metric (bytes, FLOPs, a seeded quality), one "
                "run worse at all than the latest good one (changed)")
    if said is not None:
        n, f = int(current["follows"].isna().sum()), int(current["follows"].notna().sum())
        unjudged = sum(r["series"] for r in disturbed)
        said(f"{n} current regression{'s' * (n != 1)}" + (f" and {f} following" if f else "")
             + (f"; {len(failing)} case{'s' * (len(failing) != 1)} newly failing" if failing else "")
             + (f"; {len(still)} case{'s' * (len(still) != 1)} still failing" if still else "")
             + (f"; {unjudged} series contended in the latest night, not judged" if unjudged else ""))
    return put("index.html", _plain_page("techbench dashboard", "\n".join(parts), subtitle))
