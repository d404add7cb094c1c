"""One self-contained HTML page of one or more run directories (`bench report RUN... -o FILE.html`).

The page holds each run's environment, a summary of cases by status, a section per suite (its figures from its
figure module in reports/figures/, then its results table), and every case that did not finish ok with its reason.
It reads run directories only: no torch, no impls, no suites.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from bench import interference
from bench.atomic import atomic_write_text
from bench.metrics import ARTIFACTS, digest_hex, specs_of
from bench.records import STATUSES, Record, path_text, read_run_json
from bench.rundir import command_of, holder, unfinished_shards
from bench.sides import reference_case
from reports.environment import environment
from reports.figures import NONFINITE_TEXT, figure_module, figures_for, load_frame, run_labels
from reports.figures._noisy import MARK, NOISY, caveats
from reports.html import Flagged, figure, human_bytes, page, section, table

STYLE = ("<style>.results, .wide { overflow-x: auto; } .results td { white-space: nowrap; } "
         "summary { cursor: pointer; }</style>")
# Columns of a loaded frame that are not metrics.
NOT_METRICS = set(Record.__dataclass_fields__) | {"run_dir", "run", "size", "command", "reference"}
# Spread and flag columns beside a timing: the raw samples are in the records, the median is enough for a table.
DETAIL_MARKERS = ("_p20_", "_p80_", "_iqr_", "_noisy")
# What else ran in a case's timed window: the summary names contended cases with their reason, tables keep the flag.
INTERFERENCE_DETAIL = (set(interference.KEYS) - {"contended"}) | {"idle_wait_s"}


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Writes the report of `run_dirs` to `out` (parents created) and returns its path; OutputError (and `out` as
    it was) when it cannot be written."""
    return atomic_write_text(out, render(run_dirs))


def render(run_dirs) -> str:
    """The report of `run_dirs` as one HTML document (plotly.js inline, opens offline)."""
    run_dirs = list(dict.fromkeys(Path(d) for d in run_dirs))  # the same run named twice is one run
    labels = run_labels(run_dirs)
    frame = load_frame(run_dirs)
    unfinished = _unfinished(run_dirs, labels, frame)
    parts = [unfinished, section("Environment", environment(run_dirs, labels, frame))]
    if frame.empty:
        parts.append('<p class="muted">These runs hold no records.</p>')
        suites = []
    else:
        suites = sorted(frame["suite"].unique())
        parts.append(section("Summary", _summary(frame)))
        if (predicted := _predicted(frame)) is not None:
            parts.append(section("Predicted memory", predicted))
        parts += [_suite(s, frame[frame["suite"] == s]) for s in suites]
        parts.append(section("Cases not ok", _not_ok(frame, bool(unfinished))))
    subtitle = f"{len(run_dirs)} run{'s' * (len(run_dirs) != 1)}: {', '.join(labels.values())}"
    if suites:
        subtitle += f" · suites: {', '.join(suites)}"
    return page("techbench report", STYLE + "\n".join(parts), subtitle)


def _unfinished(run_dirs, labels: dict[str, str], frame: pd.DataFrame) -> str:
    """A warning above everything for each run that has not finished (killed, interrupted, out of its --budget, or
    still running): how many of the cases it was started for have no record, and the command that runs them (for a
    merged sweep, its unfinished shards' and a new merge). Its figures and tables show what it measured so far, and
    its "not ok" list cannot show what never ran."""
    said = []
    for d in run_dirs:
        meta = read_run_json(d) or {}
        if meta.get("finished_at"):
            continue
        recorded = set(frame.loc[frame["run_dir"] == path_text(d), "case_id"]) if "run_dir" in frame else set()
        not_run = meta.get("not_run")
        n = len(set(not_run) - recorded) if isinstance(not_run, list) else None
        missing = (f"{n} case{'s' * (n != 1)} it was started for {'has' if n == 1 else 'have'} no record"
                   if n is not None else "it may not have run every case it was started for")
        name = f"<b>{html.escape(labels[str(d)])}</b>"
        if (pid := holder(Path(d))) is not None:
            said.append(f"<li>{name} is still running (bench, PID {pid}): {missing} yet.</li>")
            continue
        shards = unfinished_shards(meta) if meta.get("merged_from") else []
        absent = [str(x) for x in meta.get("missing_shards") or []]
        if absent:  # a sweep merged without some of its shards: what they hold is unknown here
            missing = (f"no run of shard {', '.join(absent)} of its sweep was merged; run "
                       f"{'it' if len(absent) == 1 else 'them'} (<code>bench run ... --shard {html.escape(absent[0])}"
                       f"</code>, as the other shards were run) and merge every shard again")
        if meta.get("merged_from"):  # a merged sweep is finished through its shards, then a new merge
            steps = [f"<code>{html.escape(now)}</code>" if now and now != "finished since" else
                     f"shard {html.escape(str(e.get('shard')))} has finished since" if now else
                     f"resume shard {html.escape(str(e.get('shard')))} ({html.escape(str(e.get('dir')))})"
                     for e, now in shards]
            then = f" {'; '.join(steps)}; then merge every shard again" if steps else ""
        else:
            then = f" <code>{html.escape(command_of(meta, Path(path_text(d))))}</code> runs them"
        said.append(f"<li>{name} has not finished: {missing}.{then}{'.' * bool(then)}</li>")
    if not said:
        return ""
    return (f'<div class="status-error"><p>Unfinished run{"s" * (len(said) > 1)} (killed, interrupted, stopped by '
            f"its --budget, or running): what follows is what was measured so far.</p><ul>{''.join(said)}</ul></div>")


def _summary(frame: pd.DataFrame) -> str:
    """Cases by status per suite (and per run when there are several), then the contended cases and why."""
    keys = ["suite", "run"] if frame["run"].nunique() > 1 else ["suite"]
    why = {i: _contended(r) for i, r in frame.iterrows()}
    rows = []
    for key, part in frame.groupby(keys, sort=True):
        counts = part["status"].value_counts()
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rows.append({**row, **{s: int(counts.get(s, 0)) for s in STATUSES}, "total": len(part),
                     "contended": sum(why[i] is not None for i in part.index)})
    listed = "".join(f'<li>{html.escape(frame.at[i, "run"])} · <code>{html.escape(frame.at[i, "case_id"])}</code>: '
                     f"{html.escape(text)}</li>" for i, text in why.items() if text is not None)
    n = sum(text is not None for text in why.values())
    head = "Contended cases (something outside the case disturbed its timing)"
    if n > FOLD_CONTENDED:
        contended = f"<details><summary>{head}: {n}, each with its reason</summary><ul>{listed}</ul></details>"
    else:
        contended = f"<p>{head}:</p><ul>{listed}</ul>" if listed else ""
    return table(rows, [*keys, *STATUSES, "total", "contended"]) + contended


FOLD_CONTENDED = 10
"""More contended cases than this are listed folded, under their count: a quick run on a busy machine flags every
timed case (207 of 411 on a shared 2-core VM), and that list, open, put the first suite's figures some 6,500 px down."""


PLAN_TARGET = 0.10
"""The plan's target error against a GPU's max_memory_allocated (on a CPU, where the tracker counts tensors, it is
exact): the report counts the cases within it."""


def _predicted(frame: pd.DataFrame) -> str | None:
    """`bench run --predict`: bench.plan's peak against the measured one per suite, as error = predicted / measured
    - 1 (worst: the largest in size), and how many cases are within PLAN_TARGET; on a GPU, where the run measured
    the caching allocator's segments (reserved_mem_bytes), the plan's error on those too. None when no case has
    both peaks."""
    if not {"predicted_peak_mem_bytes", "peak_mem_bytes"} <= set(frame.columns):
        return None
    measured = frame["status"].eq("ok") & frame["peak_mem_bytes"].gt(0)
    both = frame[measured & frame["predicted_peak_mem_bytes"].notna()]
    if both.empty:
        return None
    # a case of a run with --predict (one that predicted any) that measured a peak and got no prediction: the plan
    # could not plan it (a meta kernel torch lacks, a value the meta device lacks); `bench plan` says why
    unpredicted = frame[measured & frame["predicted_peak_mem_bytes"].isna() & frame["run"].isin(both["run"])]
    within = f"within {PLAN_TARGET:.0%}"
    reserved = {"predicted_reserved_mem_bytes", "reserved_mem_bytes"} <= set(frame.columns)
    rows = []
    keys = ["suite", "run"] if both["run"].nunique() > 1 else ["suite"]  # two GPUs' runs: each its own error
    for key, part in both.groupby(keys, sort=True):
        named = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        err = _error(part, "predicted_peak_mem_bytes", "peak_mem_bytes")
        worst = err.abs().idxmax()
        hits = int((err.abs() <= PLAN_TARGET + 1e-12).sum())  # 110 / 100 - 1 is 0.10000000000000009
        row = {**named, "cases": len(part), within: f"{hits} of {len(part)}",
               "median |error|": f"{err.abs().median():.1%}", "worst error": f"{err[worst]:+.1%}",
               "worst case": part.at[worst, "case_id"]}
        measured = part[part["predicted_reserved_mem_bytes"].notna() & part["reserved_mem_bytes"].gt(0)] \
            if reserved else part.iloc[:0]
        if not measured.empty:
            r = _error(measured, "predicted_reserved_mem_bytes", "reserved_mem_bytes")
            row["reserved: cases"] = len(measured)
            row["reserved: median |error|"] = f"{r.abs().median():.1%}"
            row["reserved: worst"] = f"{r[r.abs().idxmax()]:+.1%}"
        rows.append(row)
    for key, part in unpredicted.groupby(keys, sort=True):
        named = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row = next((r for r in rows if all(r[k] == v for k, v in named.items())), None)
        if row is None:
            rows.append(row := {**named, "cases": 0})
        row["not predicted"] = f"{len(part)}: " + ", ".join(dict.fromkeys(part["variant"].astype(str)))
    columns = ["suite", *(["run"] if len(keys) > 1 else []), "cases", within, "median |error|", "worst error",
               "worst case", *(["not predicted"] if len(unpredicted) else [])]
    extra = [c for c in ("reserved: cases", "reserved: median |error|", "reserved: worst") if any(c in r for r in rows)]
    note = (" Reserved: the allocator's segments at the case's end, measured in a process of the case's own with the "
            "default allocator settings, against the plan's model of them." if extra else "")
    columns += extra
    if len(unpredicted):
        note += (" Not predicted: cases that measured a peak but that the plan could not plan (the variants named); "
                 "`bench plan SUITE --size SIZE --gpu cpu` (or the GPU) says why.")
    rows.sort(key=lambda r: tuple(str(r[k]) for k in keys))
    return ("<p>bench.plan's prediction from shapes alone (meta device) against the measured peak_mem_bytes, for the "
            f"cases it could plan; its target on a GPU is {PLAN_TARGET:.0%}.{note}</p>" + table(rows, columns))


def _error(part: pd.DataFrame, predicted: str, measured: str) -> pd.Series:
    return part[predicted].astype(float) / part[measured].astype(float) - 1


def _contended(row) -> str | None:
    """bench.interference's reason for a record flagged contended, else None."""
    metrics = {k: None if _missing(v) else getattr(v, "item", lambda v=v: v)() for k, v in row.items()
               if k in interference.KEYS or k == "max_temp_c"}
    if metrics.get("contended") is not True:
        return None
    return interference.reason(metrics) or "contended"


def _suite(suite: str, rows: pd.DataFrame) -> str:
    parts = []
    try:
        module = figure_module(suite)
        if module is None:
            parts.append(f'<p class="muted">No figure module for {html.escape(suite)} '
                         f"(reports/figures/{html.escape(suite)}.py): figures drawn from the metrics its run "
                         "declared, where it declared any.</p>")
        parts += [figure(f) for f in figures_for(suite, rows)]
    except Exception as e:  # noqa: BLE001 - one broken figure module must not hide the measurements
        module = None
        parts.append(f'<p class="status-error">Figures for {html.escape(suite)} failed: '
                     f"{html.escape(type(e).__name__)}: {html.escape(str(e))}</p>")
    metrics = list(getattr(module, "METRICS", ())) or _generic_metrics(rows)
    specs = specs_of([read_run_json(d) for d in dict.fromkeys(rows["run_dir"])]).get(suite, {})
    parts.append(section("Results", _results(rows, metrics) + _legend(rows, metrics, specs)
                         + _ratios_lost(suite, rows), level=3))
    # what the figure module's table leaves out (a library's speed-up, a rate, telemetry), folded: on the page still
    others = [m for m in _generic_metrics(rows) if m not in metrics and _shown(rows, m)]
    if others:
        parts.append(f"<details><summary>Other metrics ({len(others)}): {html.escape(', '.join(others))}</summary>"
                     f"{_results(rows, others)}{_legend(rows, others, specs)}</details>")
    return section(suite, *parts)


def _legend(rows: pd.DataFrame, metrics: list[str], specs: dict) -> str:
    """What each column of a results table is, as its suite declared it in run.json (`ap50`, `max_vio`, `nfe` say
    little by their names), folded below the table; nothing where no shown metric has a declared meaning."""
    told = [(m, specs[m]) for m in metrics if _shown(rows, m) and m in specs and specs[m].meaning]
    if not told:
        return ""
    better = {"lower": "; lower is better", "higher": "; higher is better", None: ""}
    items = "".join(f"<li><code>{html.escape(m)}</code>{html.escape(f' ({s.unit})' if s.unit else '')}: "
                    f"{html.escape(s.meaning)}{better[s.direction]}</li>" for m, s in told)
    return f'<details class="muted"><summary>What the columns mean</summary><ul>{items}</ul></details>'


def _ratios_lost(suite: str, rows: pd.DataFrame) -> str:
    """Why ok cases lack their ratios to the reference variant (speedup_x, mem_saving_x, ...): the reference was left
    out of the run's --variant selection, or its case failed. Named only where the declared ratios are absent; a grid
    point with no reference case by design (a variant's own params) is not named, the run's selection having
    included the reference variant."""
    said = []
    for run_dir, mine in rows.groupby("run_dir", sort=False):
        meta = read_run_json(run_dir) or {}
        declared = list(((meta.get("suites") or {}).get(suite) or {}).get("metrics") or ())  # in declared order
        selected = meta.get("variants")
        status = dict(zip(mine["case_id"], mine["status"]))
        lost: dict[tuple, list] = {}
        for r in mine[mine["status"] == "ok"].itertuples():
            found = reference_case(r.case_id, meta.get("suites") or {})  # the reference's case, the ratios' names
            if found is None or found[0] == r.case_id or not found[1] or any(
                    n in mine and not _missing(getattr(r, n, None)) for n in found[1]):
                continue
            ref, there = found[0].split("/")[1], status.get(found[0])
            names = [m for m in declared if m in found[1]] or sorted(found[1])
            if there is None and isinstance(selected, list) and ref not in selected:
                lost.setdefault((ref, "was not run (left out of the run's --variant selection)", ", ".join(names)),
                                []).append(r)
            elif there not in (None, "ok"):
                lost.setdefault((ref, f"is {there} here", ", ".join(names)), []).append(r)
        for (ref, why, names), cases in lost.items():
            variants = " ".join(dict.fromkeys([ref, *(c.variant for c in cases)]))
            said.append(f"{len(cases)} case{'s' * (len(cases) != 1)} of {html.escape(mine['run'].iloc[0])} "
                        f"{'have' if len(cases) != 1 else 'has'} no {html.escape(names)}: the case of the reference "
                        f"variant {html.escape(ref)} {html.escape(why)}. Ratios are taken as a case is recorded beside "
                        f"its reference's: <code>bench run {html.escape(suite)} --variant {html.escape(variants)} "
                        "...</code> measures both.")
    return "".join(f'<p class="muted">{line}</p>' for line in said)


def _generic_metrics(rows: pd.DataFrame) -> list[str]:
    return [c for c in rows.columns if c not in NOT_METRICS | INTERFERENCE_DETAIL
            and not any(m in c for m in DETAIL_MARKERS)]


def _results(rows: pd.DataFrame, metrics: list[str]) -> str:
    """One row per case (runs of the same case side by side) with the metrics that have a value in some case;
    params shared by every case are said once above the table."""
    metrics = [m for m in metrics if _shown(rows, m)]
    several = rows["run"].nunique() > 1
    order = {c: i for i, c in enumerate(dict.fromkeys(rows["case_id"]))}
    runs = {r: i for i, r in enumerate(dict.fromkeys(rows["run"]))}
    rows = rows.assign(_o=rows["case_id"].map(order), _r=rows["run"].map(runs)).sort_values(["_o", "_r"], kind="stable")
    first = rows["params"].iloc[0] if len(rows) > 1 else {}
    shared = {k: v for k, v in first.items() if all(k in p and p[k] == v for p in rows["params"])}
    marks = caveats(rows)
    out = []
    for i, r in rows.iterrows():
        row = {"variant": r["variant"], "run": r["run"], "status": r["status"], "case_id": r["case_id"],
               "params": ", ".join(f"{k}={v}" for k, v in sorted(r["params"].items()) if k not in shared)}
        for m in metrics:
            value = r[m]
            row[m] = None if _missing(value) else (human_bytes(value) if m.endswith("_bytes") else
                                                   digest_hex(value) if m == ARTIFACTS.name else value)
            if row[m] is None and _nonfinite(r, m):  # measured, and NaN or infinite: said, not left blank
                row[m] = NONFINITE_TEXT[_nonfinite(r, m)]
            if row[m] is not None and m in marks.get(i, {}):
                row[m] = Flagged(row[m], MARK, marks[i][m])
        out.append(row)
    optional = [c for c, shown in (("params", any(r["params"] for r in out)), ("run", several)) if shown]
    columns = ["variant", *optional, "status", *metrics, "case_id"]
    classes = {"status": "status", "case_id": "muted", **{m: "num" for m in metrics}}
    note = (f'<p class="muted">Every case: {html.escape(", ".join(f"{k}={v}" for k, v in sorted(shared.items())))}'
            "</p>" if shared else "")
    if any(set(metrics) & set(m) for m in marks.values()):
        note += (f'<p class="muted"><span class="flag">{MARK}</span> beside a timing: its samples\' {NOISY} (noisy); '
                 "beside a ratio or rate: built on such a timing, of its case or of the reference's.</p>")
    return f'{note}<div class="results">{table(out, columns, classes)}</div>'


def _not_ok(frame: pd.DataFrame, unfinished: bool = False) -> str:
    """Every oom/timeout/error/skipped case: the reason's last line, the whole reason folded below it."""
    bad = frame[frame["status"] != "ok"]
    if bad.empty:
        return ('<p class="muted">Every case recorded finished ok; the unfinished runs above have cases with no '
                "record.</p>" if unfinished else '<p class="muted">Every case finished ok.</p>')
    body = []
    for _, r in bad.sort_values(["suite", "status"], kind="stable").iterrows():
        reason = str(r["error"] or "").strip()
        last = reason.splitlines()[-1] if reason else ""
        cell = html.escape(last)
        if "\n" in reason:
            cell = f"<details><summary>{cell}</summary><pre>{html.escape(reason)}</pre></details>"
        # the reason first and wrapped, ids and commands broken anywhere: the table fits a laptop screen
        body.append(f'<tr><td class="status-{html.escape(r["status"])}">{html.escape(r["status"])}</td>'
                    f'<td class="reason">{cell}</td><td class="wrap">{html.escape(r["case_id"])}</td>'
                    f'<td>{html.escape(r["run"])}</td>'
                    f'<td class="wrap"><code>{html.escape(r["command"])}</code></td></tr>')
    head = "".join(f"<th>{c}</th>" for c in ("status", "reason", "case_id", "run", "reproduce"))
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _nonfinite(row, metric: str) -> str | None:
    """"nan", "inf" or "-inf" where the record names `metric` as measured so (its value is null), else None."""
    named = row.get("nonfinite")
    return named.get(metric) if isinstance(named, dict) else None


def _shown(rows: pd.DataFrame, metric: str) -> bool:
    """Whether a table shows `metric`: some case has a value of it, or measured it NaN or infinite."""
    return metric in rows and (rows[metric].notna().any() or any(
        isinstance(d, dict) and metric in d for d in rows.get("nonfinite", ())))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)
