"""The dashboard index's failing cases, in the latest night: newly failing (ok in the run before that ran the case:
a skip is no run of it), still failing (failing since a run after an ok one) and gone NaN. A case that fails has no
value for a series to judge: without these lists no page but the suite's "Not ok" table would say it."""

from __future__ import annotations

from bench.metrics import nonfinite_worse
from reports import regressions as rule
from reports.html import number
from reports.regressions import ENV

FAILED = ("oom", "timeout", "error")  # skipped is no failure: a missing package, a CPU-only run


def text(value) -> str:
    """A text cell of a frame: "" for a null (None or NaN, as pandas keeps it)."""
    return value if isinstance(value, str) else ""


def _cases(frame):
    """(frame with its env columns, each run's record of each case, oldest first)."""
    frame = rule.envs(frame)
    return frame, frame.drop_duplicates(["run_id", "case_id"]).sort_values(["timestamp", "run_id"], kind="stable")


def _row(last, **more) -> dict:
    reason = text(last["error"]).strip().splitlines()
    return {"suite": last["suite"], "case": last["case_id"], "env_id": last["env_id"], "device": last["device"],
            "run": last["run_id"], **more, "status": last["status"], "error": reason[-1] if reason else ""}


def _ran(part):
    """A case's records on its env that ran it, oldest first: a skip (a missing package, a CPU-only run) is no run of
    it, neither ok nor failing, so one between an ok night and a failing one hides neither from these lists."""
    return part[part["status"] != "skipped"]


def failing(frame, latest: dict) -> tuple[list[dict], list[dict]]:
    """(newly, still) failing: the cases that failed in their latest run on their env, in the latest night (`latest`:
    the dashboard's _latest_night), and ran ok before, skips passed over. Newly: ok in the run before that ran them,
    with the cases gone NaN (`gone_nonfinite`). Still: failing in that run too, since a run after an ok one, which the
    newly failing list shows on the first night only, so a case broken since would leave the index on its second;
    `since` is the first run it failed in, `runs failing` how many it has. One pass over the cases for both."""
    if frame.empty:
        return [], []
    frame, cases = _cases(frame)
    newly, still = [], []
    for key, part in cases.groupby([*ENV, "case_id"], sort=True, dropna=False):
        last = part.iloc[-1]
        if latest.get(key) != last["run_id"] or last["status"] not in FAILED:
            continue
        ran = _ran(part)
        ok = [i for i, s in enumerate(ran["status"]) if s not in FAILED]  # the failing streak starts after the last
        if not ok:  # never ran ok: failing since its first run, no change to show
            continue
        streak = len(ran) - 1 - ok[-1]
        if streak == 1:
            newly.append(_row(last))
        else:
            still.append(_row(last, since=ran["run_id"].iloc[-streak], **{"runs failing": streak}))
    return newly + gone_nonfinite(frame, cases, latest), still


def gone_nonfinite(frame, cases, latest: dict) -> list[dict]:
    """Cases ok in the latest night with a metric they measured NaN, or infinite the wrong way for its direction
    (history's nonfinite; compare's rule), where the case's last earlier record of it had a value: a diverged loss
    leaves no point to judge, so it is listed with the cases newly failing, one row a case naming each such metric
    (a diverged training takes its loss and its gaps: one case, counted once)."""
    if "nonfinite" not in frame.columns or frame["nonfinite"].isna().all():
        return []
    found: dict[tuple, dict] = {}
    before = {k: p["run_id"].iloc[-2] for k, p in cases.groupby([*ENV, "case_id"], dropna=False) if len(p) > 1}
    measured = frame[frame["metric"].notna() & frame["direction"].notna()].sort_values(["timestamp", "run_id"],
                                                                                       kind="stable")
    for (*key, metric), part in measured.groupby([*ENV, "case_id", "metric"], sort=True, dropna=False):
        last, kind, key = part.iloc[-1], part["nonfinite"].iloc[-1], tuple(key)
        wrong = nonfinite_worse(kind if isinstance(kind, str) else None, last["direction"])
        if len(part) > 1 and latest.get(key) == last["run_id"] and wrong and part["value"].iloc[-2] == \
                part["value"].iloc[-2]:  # its last earlier record measured a value (not NaN)
            prev = part.iloc[-2]  # the case's run before tonight's, or an earlier one where that run failed it
            when = "the run before" if before.get(key) == prev["run_id"] else f"in run {prev['run_id']}"
            said = f"{metric} measured {kind} ({number(prev['value'])} {when})"
            row = found.setdefault(key, {"suite": last["suite"], "case": last["case_id"], "env_id": last["env_id"],
                                         "device": last["device"], "run": last["run_id"], "status": last["status"]})
            row["error"] = f"{row['error']}; {said}" if "error" in row else said
    return list(found.values())
