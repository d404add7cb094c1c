"""What a resume keeps of the run it continues, and what it says where the rest is measured otherwise: on other
code, at another CPU thread count, by other suites' declarations, on another machine or another GPU of it."""

from __future__ import annotations

from pathlib import Path

from bench.machines import RESUMED, measured_resumes, note_gpu
from bench.records import RunMeta


def code_changed(was: dict | None, now: dict | None, out: Path) -> str | None:
    """Why a resume of the run at `out` measures other code than the cases it finished (run.json's git, `was`, and
    this checkout's, `now`: another commit, or uncommitted changes to code since a clean start), or None where it
    does not, or cannot be told (no git on either side, or a start with uncommitted changes already)."""
    was, now = was if isinstance(was, dict) else {}, now if isinstance(now, dict) else {}
    if not was.get("sha") or not now.get("sha"):
        return None
    if now["sha"] != was["sha"]:
        what = f"this checkout is at {now['sha'][:12]}" + " with uncommitted changes" * bool(now.get("dirty"))
    elif now.get("dirty") and was.get("dirty") is False:
        what = "this checkout has uncommitted changes to its code since"
    else:
        return None
    return (f"{out} was started at git {was['sha'][:12]}{' with uncommitted changes' * bool(was.get('dirty'))} and "
            f"{what}: the cases this resume runs measure other code than those it finished, while its run.json names "
            "the first only; a new --out measures one version")


def thread_counts(suites: dict, now: dict, todo: list, finished: list, out: Path) -> tuple[dict, list[str]]:
    """The CPU thread count run.json names for each suite of a run (`now`: this command's, per suite name) once a
    resume plans `todo` beside its `finished` records, and a warning for each suite whose cases measured at two
    counts. A suite this command runs no case of keeps the count its cases were measured at (run.json `suites`):
    a resume that runs nothing, or none of that suite, measures nothing at another count, and the history labels
    each case with its suite's count (a series per thread count)."""
    running, measured = {c.suite for c in todo}, {r.suite for r in finished}
    counts, mixed = {}, []
    for name, threads in now.items():
        was = suites.get(name) if isinstance(suites.get(name), dict) else {}
        counts[name] = was["threads"] if "threads" in was and name not in running else threads
        if "threads" in was and name in running and name in measured and was["threads"] != threads:
            mixed.append(f"{out}: {name}'s finished cases ran at {was['threads'] or 'the default'} CPU threads and "
                         f"this resume runs the rest at {threads or 'the default'}, while run.json names one "
                         "count per suite (this one); a resume with the run's --threads (and --cpus) measures one")
    return counts, mixed


def declarations(was: dict, now: dict, todo: list, threads: dict) -> dict:
    """run.json `suites` once a command plans `todo`: each suite of `now` (name -> its declaration by this code) with
    its CPU threads (thread_counts). A suite this command runs no case of keeps its entry in `was`: the declaration
    of the code that measured its records (a resume that runs nothing after transformers was installed must not label
    variants that only skipped for want of it "transformers 5.x")."""
    running = {c.suite for c in todo}
    kept = {n: was[n] for n in now if n not in running and isinstance(was.get(n), dict)}
    return {**was, **{n: {**kept.get(n, declared), "threads": threads[n]} for n, declared in now.items()}}


def note_machine(meta: RunMeta, env_id: str, env: dict, cases: list[str] = (), finished: list = (),
                 out: Path | None = None) -> list[str]:
    """Add this machine (`env_id`, `env`) to run.json `meta`'s machines, where a resume continues the run on another
    than the one it started on: `envs` (env_id -> env) lists each, as a merge of shards from several machines does,
    and each record keeps its own env_id, so that history, compare and the report take a case under the machine that
    measured it, never under run.json's `env` (the first machine's, kept). On a machine the run has measured on, a
    resume that runs `cases` on another of its GPUs is listed too (bench.machines.note_gpu): its warning, if any."""
    keep_measured(meta, finished)  # a resume stopped before its first case named a GPU that measured nothing
    envs = meta.extra.get("envs") if isinstance(meta.extra.get("envs"), dict) else {meta.env_id: meta.env}
    if env_id not in envs:
        meta.extra["envs"] = {**envs, env_id: env}
        return []
    return note_gpu(meta, env_id, env, cases, finished, out)


def keep_measured(meta: RunMeta, records) -> None:
    """Keep under run.json `meta`'s resumed_envs only the resumes on other GPUs that measured one of `records` (the
    run's): one that measured none would name its GPU as one that measured the run (the report's "GPU used",
    compare's gpu_used, bench merge's count) when no case of it was (bench.machines.measured_resumes)."""
    kept = measured_resumes(meta.to_json(), records)
    if kept:
        meta.extra[RESUMED] = kept
    else:
        meta.extra.pop(RESUMED, None)
