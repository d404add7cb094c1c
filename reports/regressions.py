"""The regression rule of the nightly dashboard: a rolling baseline per series, a noise band, step and drift flags.

Pure pandas over a history frame (bench.history.load); reports/dashboard.py draws what it finds.
"""

from __future__ import annotations

import bisect
import math
import statistics

from bench.metrics import same_exact
from reports import noise

# A measured series is judged from its 4th undisturbed point on: its first 3 form the baseline unjudged. From one or
# two points there is no noise to weigh (a MAD of them is 0 or their distance), so the band was the bare threshold:
# three smoke nights of ci/nightly.sh on a shared 2-core VM flagged two timings at +32% and +97% against their first
# night alone; and against one unusually fast first run every later run would be bad and, being bad, never enter the
# baseline. A band from 3 points is 22 sigma wide (noise.BAND_QUANTILE): only a gross change is flagged that early.
MIN_BASELINE = 3
# Drift baseline: the up to 23 not-bad points older than the step window (8-30 runs back at window 7). 23 nights of
# a 1%/night drift move the latest point ~20% from their median while a 7-run window lags only ~4% behind it.
DRIFT_POINTS, DRIFT_MIN = 23, 5
# Machines sharing a store start their nights hours apart; a series more than a day older than the store's newest run
# missed the latest night: its machine or its case no longer runs.
STALE_DAYS = 1.0
# A library's variant is measured with one version of it: another version starts a series of its own, as a torch or
# GPU change starts another environment (a library upgrade is not a regression of the code under test). So does
# another thread count on the CPU (--threads 2 on a night that ran 1: x1000 on mla's decode on a busy 2-core VM).
# env_id groups the GPUs of one machine: its nights on an H100 (CUDA_VISIBLE_DEVICES=1) are no regression of those on
# its H200, so the model of GPU measured on (the history's `gpu`) is part of an environment; GPU 0 and GPU 1 of one
# model stay one series.
KEYS = ["env_id", "device", "gpu", "suite", "case_id", "library", "threads", "metric"]
ENV = ["env_id", "device", "gpu"]
NO_ENV = "unknown"  # runs without an env_id form one environment of their own


def check(threshold: float, window: int) -> None:
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a fraction in [0, 1) (0.05 is 5%), got {threshold!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be a whole number of runs >= 2, got {window!r}")


def envs(frame):
    device, gpu = (frame[c].fillna("") if c in frame.columns else "" for c in ("device", "gpu"))
    return frame.assign(env_id=frame["env_id"].fillna(NO_ENV), device=device, gpu=gpu)


def _libraries(ok):
    """`ok` with its library and threads columns filled as text: "" for techbench's own variants, and for a GPU run's
    threads. A row written before a column takes the value that the next labelled run of its series names, so that a
    store carried across the upgrade that added the column keeps each series (and its flag) whole rather than
    starting it again at the labelled runs."""
    for column in ("library", "threads"):
        if column not in ok.columns:
            ok = ok.assign(**{column: ""})
            continue
        series = [k for k in KEYS if k not in ("library", "threads")]
        filled = ok.sort_values("timestamp", kind="stable").groupby(series, dropna=False)[column].bfill()
        text = [str(int(x)) if isinstance(x, (int, float)) and math.isfinite(x) else x if isinstance(x, str) else ""
                for x in filled.reindex(ok.index)]
        ok = ok.assign(**{column: text})
    return ok


def _series(frame):
    """ok numeric rows of metrics with a direction, one value per (series, run): the median if a run holds a case
    twice. A metric's direction and kind are those its suite declared in the newest run that has them (the stored
    columns), so that a series follows a metric that became informational, exact, or changed sides, since older runs
    were added. A run written before the kind column (an older techbench, on any machine of the store) says nothing
    about it; a metric no run gives a kind is judged as measured, as it was then."""
    ok = frame[(frame["status"] == "ok") & frame["metric"].notna() & frame["value"].notna()]
    kind = ok["kind"] if "kind" in ok.columns else None
    by_time = ok.assign(kind=kind).sort_values("timestamp", kind="stable").groupby(["suite", "metric"], dropna=False)
    # as dicts: a lookup in a Series of a MultiIndex costs ~70 us, a minute over the rows of 400 cases of 60 nights
    direction = by_time["direction"].agg(lambda d: d.iloc[-1]).to_dict()  # not .last(), which skips a newer None
    newest_kind = by_time["kind"].last().to_dict()  # skips the nulls of runs that predate the column
    keys = list(zip(ok["suite"], ok["metric"], strict=True))
    ok = _libraries(envs(ok)).assign(direction=[direction.get(k) for k in keys],
                                     metric_kind=[_kind(newest_kind.get(k)) for k in keys])
    ok = ok[ok["direction"].notna() & (ok["metric_kind"] != "info")]
    # a store written before the flag has no such columns, or nulls in them: not contended
    flag = ok["contended"].astype("boolean").fillna(False) if "contended" in ok.columns else False
    why = ok["contended_reason"] if "contended_reason" in ok.columns else None
    ok = ok.assign(contended=flag, contended_reason=why)
    extra = [c for c in ("git_sha", "git_dirty", "variant", "artifacts", "inputs") if c in ok.columns]
    agg = {"value": "median", "timestamp": "min", "direction": "first", "metric_kind": "first", "contended": "max",
           "contended_reason": "first", **{c: "first" for c in extra}}
    out = ok.groupby(KEYS + ["run_id"], as_index=False, dropna=False).agg(agg)
    out["contended"] = out["contended"].astype(bool)
    return out.sort_values(KEYS + ["timestamp", "run_id"], kind="stable", ignore_index=True)


def _kind(stored) -> str:
    return stored if isinstance(stored, str) else "measured"  # null, NaN: a row written before the column


def _worse(value: float, baseline: float, direction: str) -> float:
    """Relative change with the sign flipped so that positive is worse."""
    change = (value - baseline) / abs(baseline)
    return change if direction == "lower" else -change


def _judge(values: list[float], direction: str, threshold: float, window: int,
           contended: list[bool] = (), exact: bool = False, artifacts: list = (),
           prior: tuple[float, float] = (0.0, 0.0)) -> list[dict | None]:
    """Per point (None when it has no baseline): baseline, half (relative band half-width), lower and upper band
    edges (lower clamped at 0 for a positive baseline), old and old_half (the drift baseline and its band, None
    while too few older points) and kind: "step", "drift" or (exact) "changed" when the point is bad, else None. A
    point flagged in `contended` is never bad and never enters a baseline, unless the series is exact. An exact
    point whose `artifacts` (trained weights) differ from its baseline's is held to the threshold, not exactly. Rule:
    regressions()."""
    out, kept, kept_values = [], [], []  # the points that may enter later baselines: indices, values
    seen = []  # the undisturbed values, bad or not: the noise estimate's
    for i, v in enumerate(values):
        away = not exact and i < len(contended) and bool(contended[i])
        if exact:
            mine, theirs = (_at(artifacts, i), _at(artifacts, kept[-1])) if kept else (None, None)
            # another training's numbers, or unknown ones (a point of a techbench before the digest) beside known
            half = threshold if mine != theirs else 0.0
            band = (kept_values[-1], half) if kept_values else None
        else:
            band = noise.band(kept_values, seen, threshold, window, prior) if len(kept_values) >= MIN_BASELINE else None
        if not away:
            seen.append(v)  # after the band it is judged by: its own value is no part of it
        if band is None:
            out.append(None)
            if not away:
                kept.append(i)
                kept_values.append(v)
            continue
        b, half = band
        if exact:  # deterministic: any move the wrong way is a change, whatever its size, even from 0
            worse = (v > b if direction == "lower" else v < b) and not same_exact(v, b)
            kind = "changed" if worse and (not half or not b or _worse(v, b, direction) > half) else None
            # from other weights, held to the threshold: against the older points too, or retrains walk it down
            older = kept_values[max(0, len(kept_values) - 1 - DRIFT_POINTS):-1] if half else []
        else:
            kind = "step" if not away and _worse(v, b, direction) > half else None
            end = bisect.bisect_left(kept, i - window)  # kept points at least window + 1 runs back
            older = kept_values[max(0, end - DRIFT_POINTS):end]
        old = statistics.median(older) if len(older) >= DRIFT_MIN else None
        old_half = max(2 * threshold, half)
        if kind is None and not away and old and _worse(v, old, direction) > old_half:
            kind = "drift"
        lower = b - half * abs(b)
        out.append({"baseline": b, "half": half, "lower": max(0.0, lower) if b > 0 else lower,
                    "upper": b + half * abs(b), "old": old or None, "old_half": old_half, "kind": kind})
        if not away and kind is None:
            kept.append(i)
            kept_values.append(v)
    return out


def _at(values, i: int):
    value = values[i] if i < len(values) else None
    return value if isinstance(value, str) and value else None


def change_pct(value: float, baseline: float) -> float:
    """value against baseline in % of it, signed; ±inf from a baseline of 0 (an exact series' may be)."""
    if baseline:
        return 100 * float(value - baseline) / abs(float(baseline))
    return 0.0 if value == baseline else math.copysign(math.inf, float(value - baseline))


def not_judged(series) -> list[bool]:
    """Per point of a series (judged()'s frame): contended, so judged against nothing. A series judged exactly is
    judged regardless: what another process does to the clock does not change a count of bytes."""
    exact = bool(series["exactly"].iloc[-1])
    return [bool(c) and not exact for c in series["contended"]]


def streak(judged: list[dict | None], contended: list[bool] = (), at_least: int = 2) -> list[int]:
    """Positions of the run of bad points that ends at the latest point not contended (contended points, which
    carry no verdict, neither break nor extend it); empty when it is shorter than `at_least` (not flagged): 2 for
    a measured series, 1 for an exact one, which has no noise to confirm."""
    bad = []
    for i in range(len(judged) - 1, -1, -1):
        if i < len(contended) and contended[i]:
            continue
        if not (judged[i] and judged[i]["kind"]):
            break
        bad.append(i)
    return bad[::-1] if len(bad) >= at_least else []


def flagged(judged: list[dict | None], series) -> list[int]:
    """streak() of one series of judged()."""
    return streak(judged, not_judged(series), 1 if series["exactly"].iloc[-1] else 2)


def varied_at(series) -> str | None:
    """The first commit two runs of which gave the series different values (same_exact), None if none did: an exact
    metric that does so is not deterministic on this environment (a model retrained on a GPU whose kernels add in
    any order, say), and is judged against a noise band like a measured one. Runs from a dirty checkout or without a
    commit say nothing about it."""
    if "git_sha" not in series.columns:
        return None
    clean = series[series["git_sha"].notna() & (series["git_dirty"].ne(True) if "git_dirty" in series.columns
                                                else True)]
    for sha, values in clean.groupby("git_sha", sort=False)["value"]:
        if not same_exact(values.min(), values.max()):
            return str(sha)
    return None


def judged(frame, threshold: float, window: int) -> list:
    """[(points of one series in run order, _judge of its values)] for every series of a history frame. Each series
    carries `exactly`: its metric is exact and no commit's runs of it differ (varied_at), so it is judged exactly."""
    every = []
    for _, s in _series(frame).groupby(KEYS, sort=True, dropna=False):
        every.append(s.assign(exactly=s["metric_kind"].iloc[-1] == "exact" and varied_at(s) is None))
    seen: dict[tuple, list] = {}  # an environment's measured series, as their undisturbed values
    for s in every:
        if not s["exactly"].iloc[-1]:
            seen.setdefault(_env(s), []).append(s.loc[~s["contended"], "value"].tolist())
    priors = {env: noise.prior_of(values, window) for env, values in seen.items()}
    out = []
    for s in every:
        artifacts = s["artifacts"].tolist() if "artifacts" in s.columns else []
        exactly = bool(s["exactly"].iloc[-1])
        prior = (0.0, 0.0) if exactly else priors[_env(s)]
        out.append((s, _judge(s["value"].tolist(), s["direction"].iloc[-1], threshold, window,
                              s["contended"].tolist(), exactly, artifacts, prior)))
    return out


def _env(series) -> tuple[str, ...]:
    return tuple(str(x) for x in series[ENV].iloc[-1])


def flags(judged: list, newest):
    import pandas as pd

    columns = ["suite", "case_id", "variant", "metric", "env_id", "device", "gpu", "direction", "kind", "baseline",
               "band_pct", "previous", "latest", "change_pct", "n_runs", "bad_runs", "run_id", "timestamp",
               "age_days", "stale", "library", "threads", "follows"]
    rows = []
    for s, j in judged:
        bad = flagged(j, s)
        if not bad:
            continue
        # the latest judged point speaks for the flag; the series' latest point, contended or not, for its age
        kind, p, last, values = j[bad[0]]["kind"], j[bad[-1]], s.iloc[bad[-1]], s["value"].tolist()
        # what the latest point was bad against: a run of bad points may start as a step and end as a drift
        b, half = (p["old"], p["old_half"]) if p["kind"] == "drift" and p["old"] else (p["baseline"], p["half"])
        age = (newest - s["timestamp"].iloc[-1]).total_seconds() / 86400
        latest, previous = values[bad[-1]], values[bad[-2] if len(bad) > 1 else bad[-1] - 1]
        change = change_pct(latest, b)
        rows.append({"suite": last["suite"], "case_id": last["case_id"], "variant": last.get("variant"),
                     "metric": last["metric"], "env_id": last["env_id"],
                     "device": last["device"], "gpu": last.get("gpu"), "direction": last["direction"], "kind": kind,
                     "baseline": b, "band_pct": 100 * half, "previous": previous, "latest": latest,
                     "change_pct": change, "n_runs": len(values), "bad_runs": len(bad),
                     "run_id": last["run_id"], "timestamp": last["timestamp"], "age_days": age,
                     "stale": age > STALE_DAYS, "library": last["library"], "threads": last["threads"],
                     "follows": None,
                     "inputs": _inputs(s)})
    _follow(rows)
    return pd.DataFrame(rows, columns=columns)


def _inputs(series) -> list[str]:
    """The metrics a derived series is computed from (the history's `inputs`, its latest run's), else []."""
    import json

    text = series["inputs"].iloc[-1] if "inputs" in series.columns else None
    try:
        names = json.loads(text) if isinstance(text, str) else []
    except ValueError:
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _follow(rows: list[dict]) -> None:
    """Set `follows` on each flag of a derived metric (a rate, TFLOP/s, % of peak) whose latest bad run is that of
    exactly one flagged metric it is computed from, in the same series but for the metric: the measured metric at the
    root of that chain. One slower step is then one regression with its rates under it, not four; a ratio of two
    timings that both moved follows neither, as compare's rule (bench.verdicts.follows)."""
    key = ("env_id", "device", "gpu", "suite", "case_id", "library", "threads")
    flagged = {(*(r[k] for k in key), r["metric"]): r for r in rows}
    parent = {}
    for r in rows:
        moved = [m for m in r.pop("inputs") if (other := flagged.get((*(r[k] for k in key), m))) is not None
                 and other["run_id"] == r["run_id"]]
        if len(moved) == 1:
            parent[(*(r[k] for k in key), r["metric"])] = moved[0]
    for r in rows:
        here, seen = (*(r[k] for k in key), r["metric"]), set()
        while here in parent and here not in seen:
            seen.add(here)
            here = (*here[:-1], parent[here])
        r["follows"] = here[-1] if here[-1] != r["metric"] else None


def regressions(frame, threshold: float = 0.05, window: int = 7):
    """Current regressions of a history frame (history.load), one row per series (KEYS: env_id, device, gpu, suite,
    case_id, library, threads, metric).

    A series is the ok values of one case and one metric with a direction (as its suite declared it; informational
    metrics are never judged) on one env_id, device and model of GPU, at one CPU thread count, and for a variant that
    measures a library, one version of it, in run order; a hardware or software change starts a new series, so it is
    never a regression. The first 3 points not contended form the baseline unjudged (MIN_BASELINE); each later point
    v[i] is judged against baselines made only of earlier points that were not bad:
        E[i]        = the up to `window` most recent such points
        baseline[i] = median(E[i])
        band[i]     = max(threshold, k[i] * sigma[i] / |baseline[i]|)   (relative half-width of the noise band)
        sigma[i]    = 1.4826 * MAD(successive differences of the up to 4 * window most recent undisturbed points, bad
                      ones included) / sqrt(2) (1.4826 * MAD(E[i]) about baseline[i] while those points are `window`
                      or fewer; then, moderated by the environment's series: sigma^2 = (d0 s0^2 + (n - 1) sigma^2) / (d0
                      + n - 1) relative to baseline[i], on d0 + n - 1 degrees of freedom, where (d0, s0) is the prior
                      of the relative noise of the env_id's, device's and GPU's other measured series
                      (noise.prior_of), unless E[i]'s sample variance over s0^2 is outside the central 90% of
                      F(n - 1, d0) (noise._alike))
        k[i]        = t(0.99865, n - 1) * sqrt(1 + 1 / |E[i]|), Student's t at the n values sigma[i] comes from (3.5
                      from 28 points, 5.9 from 6, 22 from 3), or at d0 + n - 1 where moderated: the 3-sigma quantile
                      of a prediction from an estimated noise
        worse(x)    = (v[i] - x) / |x|, negated for higher-is-better metrics
        O[i]        = the up to 23 such points older than E's window (at least window + 1 runs back), when >= 5
    v[i] is bad, kind "step", when worse(baseline[i]) > band[i]; else bad, kind "drift", when worse(median(O[i])) >
    max(2 * threshold, band[i]). A series is flagged when its last two points are both bad; its kind is that of the
    first point of the run of bad points ending at the latest. Bad points never enter a baseline, so a lasting
    regression stays flagged until a point comes back inside both bands (only such points can move the baseline towards
    a new level); one bad night is not flagged. There is no accepting a change: only a new series (another env_id,
    device, GPU model, library version or thread count) starts a fresh baseline. A contended point (its case's timed
    window was disturbed by other load: the history's `contended` column) is judged against nothing: it is never bad,
    never enters a baseline or a noise estimate, and a run of bad points passes over it.
    An exact metric (the history's `kind` column: bytes counted, FLOPs, a seeded quality; deterministic for a commit
    and machine) has no noise to weigh: its baseline is the latest not-bad point (from the first on) and its band is
    0, so v[i] is bad, kind "changed", when it moved the wrong way at all (bench.metrics.same_exact: whole numbers
    to the unit, fractions beyond 1e-9 relative; a 4% growth in bytes is not hidden under a 5% threshold), and one
    such point is flagged. Contention does not excuse it, and it has no drift: every step is seen. Where two runs of
    one commit gave an exact metric different values (varied_at), it is not deterministic there, and its series is
    judged as a measured one. A point whose case read other cached artifacts than its baseline's (the history's
    `artifacts`: trained weights of another training, whose numbers differ; or none beside some, from runs of a
    techbench before the digest) is held to the threshold rather than exactly; a count of bytes that the weights'
    values do not move stays as it was. A metric that no run of the store gives a kind (written before the column)
    is measured. A flag of a derived metric (the history's `inputs`) whose latest bad run is that of exactly one
    flagged input of its case `follows` it (the root of the chain: % of peak <- TFLOP/s <- the step's time).
    Columns: suite, case_id, variant, metric, env_id, device, gpu, direction, kind, baseline and band_pct (those the
    latest point was bad against: the older median where it was bad by drift alone, whatever the flag's kind), previous
    (the bad point before the latest; before a lone exact change, the point before it), latest, change_pct (latest
    against that baseline, signed; ±inf from a baseline of 0), n_runs, bad_runs (length of the bad run), run_id,
    timestamp (latest point), age_days (from the series' latest run to the store's newest run), stale (age_days >
    STALE_DAYS: the series missed the latest night), library ("" for techbench's own variants), threads (the CPU thread
    count as text, "" on a GPU) and follows (the metric whose flag this one moved with, else None). "Latest point" is
    the latest not contended; age_days counts contended runs, which ran all the same.
    """
    check(threshold, window)
    return flags(judged(frame, threshold, window), frame["timestamp"].max())
