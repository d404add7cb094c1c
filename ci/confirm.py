"""A night's slower timings, measured again before they fail the night: `python ci/confirm.py GOOD RUN CONFIRM`.

ci/nightly.sh calls it when the comparison of tonight's RUN against the last good nights (GOOD: a folder of their run
directories) finds a regression. Where every failure is a timing called slower (no exact metric that changed, no case
newly failing, nothing that rerunning cannot mend: tonight's run damaged, unfinished or disturbed, no shared case), the
cases of those timings run once more, with the cases of their reference variant (the ratios' other half), into
CONFIRM; then the rerun alone is compared with the good nights, as tonight's run was. A timing fails the night where it
is slower again there, by the same gate: a slowdown of the code is in both runs, whatever their sizes (x1.3 tonight
and x1.8 in the rerun fails); a one-off of the machine (a run x1.5-1.9 slower than four good nights within 2%, with
nothing the interference sampler sees: ci/README.md) is not in the rerun. A rerun case that fails, or whose metric
went NaN, fails the night; so does a rerun that cannot clear them: disturbed (most of its timings contended),
unfinished or damaged, or whose disturbed timing still looked slower.
The rerun's comparison page is CONFIRM/compare-last-good.html, and RUN/confirm.txt says what became of the slower
timings that RUN/compare-last-good.html shows.
Exit 0: the night passes; 1: it fails (confirmed, or not rerunnable); 2: bad input.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.atomic import OutputError, atomic_write_text  # noqa: E402 - after the checkout is on the path
from bench.commands import counted, run_dirs  # noqa: E402
from bench.compare import compare  # noqa: E402
from bench.records import read_run_json  # noqa: E402
from bench.sides import reference_case  # noqa: E402


def rerunnable(c) -> bool:
    """The comparison fails on slower timings alone: every gating row a timing, and nothing else failing."""
    timings = c.gating.index.isin(c.tested.index)
    tonight = any(s[0] == "new" for s in c.unfinished + c.damaged)  # a damaged good night is compare's to name
    return (len(c.gating) > 0 and bool(timings.all()) and not len(c.newly_failing) and not len(c.unjudged_slower)
            and not c.new_disturbed and not c.nothing_shared and not tonight
            and not c.nonfinite_worse)


def cases_to_rerun(c, meta: dict) -> list[str]:
    """The gating timings' cases and their reference variant's, in the comparison's order."""
    ids = []
    for case in dict.fromkeys(c.gating["case_id"]):
        ref = reference_case(case, meta.get("suites") or {})
        ids += [case, *([ref[0]] if ref and ref[0] != case else [])]
    return list(dict.fromkeys(ids))


def confirm(good: Path, run: Path, out: Path, threshold: float, rerun) -> int:
    """The night's exit code (0 passes, 1 fails), `rerun(case_ids, run.json of RUN, out)` running the cases of its
    slower timings again into `out` (its exit code) where those are all that fail it."""
    base = counted(run_dirs([good]))
    first = compare(base, [run], threshold)
    if not first.failed:
        print("confirm: the night passes as it is")
        return 0
    if not rerunnable(first):
        print("confirm: not a matter of slower timings alone (a case failing, a metric gone NaN, an exact metric "
              "changed, or a run disturbed, damaged or unfinished): the night fails as it is")
        return 1
    meta = read_run_json(run) or {}
    ids = cases_to_rerun(first, meta)
    timings = _timings(first.gating, ratios=True)
    print(f"confirm: {len(timings)} timing(s) slower ({'; '.join(timings)}): running their {len(ids)} case(s) again")
    if rerun(ids, meta, out) not in (0, 1) or read_run_json(out) is None:  # 1: a case errored, which compare says
        print("confirm: the rerun did not run: the night fails as it is", file=sys.stderr)
        return 1
    second = compare(base, [out], threshold, only=set(ids))  # the rerun alone, judged as tonight's run was
    for line in second.summary_lines():
        print(line)
    page = _page(second, out / "compare-last-good.html")
    # slower again: gated as tonight's were, or looked slower where the rerun was disturbed (compare fails on both)
    again = {*zip(second.gating["case_id"], second.gating["metric"]),
             *zip(second.unjudged_slower["case_id"], second.unjudged_slower["metric"])}
    slower_again = [k in again for k in zip(first.gating["case_id"], first.gating["metric"])]
    kept = _timings(first.gating[slower_again])
    gone = _timings(first.gating[[not k for k in slower_again]])
    failing = [f"{r.case_id} ({r.new_status})" for r in second.newly_failing.itertuples()]
    # a metric the rerun measured NaN (or infinite the wrong way) fails it as a failing case does in compare's gate
    failing += [f"{x['case_id']} ({x['metric']} {x['value']})" for x in second.nonfinite_worse]
    unsure = rerun_unsure(second)
    verdict = (f"confirm: {len(kept)} of {len(timings)} slower again in the rerun"
               + (f": {'; '.join(kept)}" if kept else "")
               + (f"; not reproduced: {'; '.join(gone)}" if gone and not unsure else "")
               + (f"; not judged: {'; '.join(gone)}" if gone and unsure else "")
               + (f"; failed in the rerun: {'; '.join(failing)}" if failing else "")
               + (f"; {unsure}: it cannot show the slowdown gone" if unsure else ""))
    print(verdict)
    code = 1 if kept or failing or unsure else 0
    # beside tonight's compare-last-good.html, which shows the slower timings the rerun judged: what became of them
    note = [f"the night {'fails' if code else 'passes'}: its {len(timings)} slower timing(s) were run again "
            f"into {out}", verdict] + ([f"the rerun's comparison: {page}"] if page else [])
    try:
        atomic_write_text(run / "confirm.txt", "\n".join(note) + "\n")
    except OutputError as e:
        print(f"confirm: warning: {e}", file=sys.stderr)
    return code


def _timings(rows, ratios: bool = False) -> list[str]:
    """One entry per timing of `rows` (gating rows of a comparison), each rate that moved with it (compare's
    `follows`: tokens/s, TFLOP/s, a ratio to the reference) named after it, as compare's summary lists them: one
    slower step is one timing, not four. A rate whose timing is not among `rows` is an entry of its own."""
    listed = set(zip(rows["case_id"], rows["metric"]))
    out = []
    for r in rows.itertuples():
        if isinstance(r.follows, str) and (r.case_id, r.follows) in listed:
            continue  # named with its timing
        same = rows[(rows["case_id"] == r.case_id) & (rows["follows"] == r.metric)]
        with_it = ", ".join(f"{m} x{x:.3f}" if ratios else m for m, x in zip(same["metric"], same["ratio"]))
        out.append(f"{r.case_id} {r.metric}" + f" x{r.ratio:.3f}" * ratios + (f" (with it: {with_it})" if with_it
                                                                             else ""))
    return out


def rerun_unsure(c) -> str | None:
    """Why the rerun's comparison cannot clear tonight's slower timings (None where it can): the rerun disturbed
    (most of its timings contended), unfinished or damaged, as compare's gate fails such a NEW run."""
    if c.new_disturbed:
        return f"the rerun was disturbed ({c.new_contended} of its {c.timings} timings contended)"
    why = [f"the rerun {what}" for what, runs in (("did not finish", c.unfinished), ("is damaged", c.damaged))
           if any(s[0] == "new" for s in runs)]
    return " and ".join(why) or None


def _page(comparison, path: Path) -> Path | None:
    """The rerun's comparison page (None, said, where it cannot be written: the night's verdict stands anyway)."""
    try:
        from reports.compare_page import write_compare_html

        written = write_compare_html(comparison, path)
    except (ImportError, OutputError) as e:  # plotly absent, or the folder unwritable
        print(f"confirm: warning: no page of the rerun's comparison ({e})", file=sys.stderr)
        return None
    print(f"confirm: the rerun's comparison -> {written}")
    return written


def bench_run(python: str):
    """rerun(): `PYTHON -m bench run` of exactly these cases, at the night's size and device."""
    from bench.case_ids import glob_escape

    def rerun(ids: list[str], meta: dict, out: Path) -> int:
        suites = sorted({i.split("/", 1)[0] for i in ids})
        cmd = [python, "-m", "bench", "run", *suites, "--size", str(meta.get("size")), "--device",
               str(meta.get("device")), "--out", str(out), *(a for i in ids for a in ("--case", glob_escape(i)))]
        return subprocess.run(cmd).returncode

    return rerun


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="ci/confirm.py", description=__doc__.splitlines()[0])
    p.add_argument("good", type=Path)
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path, help="the rerun's run directory (new)")
    p.add_argument("threshold", type=float, nargs="?", default=5.0, help="percent (5)")
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs bench (the nightly's)")
    args = p.parse_args(argv)
    return confirm(args.good, args.run, args.out, args.threshold / 100, bench_run(args.python))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
