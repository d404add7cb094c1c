"""The environment and GPU that measured each record of a run directory, from its run.json.

A run's records were measured in its own `env`; a merged run's (bench.merge) by its shards, each in the environment
its own run.json recorded. env_id groups machines, not the GPUs of one: shards split over the GPUs of one machine by
CUDA_VISIBLE_DEVICES share an env_id (`envs` holds one of them), and each record names `cuda:0`. So merged_from keeps
each shard's env beside its run_id and env_id, and a record's run_id and env_id find its shard's. A run resumed on
another GPU of a machine it measured on keeps the same run_id and env_id in its records: run.json `resumed_envs`
keeps each such resume's env with the cases it was to run and its start (note_gpu).
"""

from __future__ import annotations

import datetime as dt

from bench.env import measured_gpu

RESUMED = "resumed_envs"
"""run.json: one entry ({started_at, env_id, device, env, cases}) per resume on another GPU of a machine the run had
measured on, and per resume on that machine after one, while a record of the run is taken under it
(bench.resumes.keep_measured); a merge keeps a shard's in its merged_from entry."""


def _shards(meta: dict) -> list[dict]:
    """The merged_from entries of run.json `meta` that keep their shard's env (a merge made since they do)."""
    entries = meta.get("merged_from") if isinstance(meta.get("merged_from"), list) else []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("env"), dict)]


def _resumes(holder: dict) -> list[dict]:
    """The `resumed_envs` entries of a run.json, or of a merged_from entry, that keep their env."""
    entries = holder.get(RESUMED) if isinstance(holder.get(RESUMED), list) else []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("env"), dict)]


def _ran(entry: dict, record) -> bool:
    """Whether resume `entry` may have run `record`: its machine's, a case it was to run, started after it began."""
    cases = entry.get("cases") if isinstance(entry.get("cases"), list) else []
    return entry.get("env_id") == record.env_id and record.case_id in cases \
        and str(record.started_at or "") >= str(entry.get("started_at") or "")


def _resumed(holder: dict, record) -> dict | None:
    """The env of the last resume of `holder` that ran `record`'s case on its machine, started before it was: a case
    a resume planned but did not reach (killed) has a record of an earlier start, or of a later resume's."""
    found = None
    for e in _resumes(holder):
        if _ran(e, record):
            found = e["env"]
    return found


def measured_resumes(holder: dict, records) -> list[dict]:
    """The `resumed_envs` entries of `holder` (a run.json) that a record of `records` is taken under (record_env: the
    last that ran its case). A resume stopped before its first case (Ctrl-C at its warning, to resume on the GPU the
    run measured on), or whose every case a later --retry-failed ran again elsewhere, measured none of the run."""
    entries, used = _resumes(holder), set()
    for r in records:
        used.update([i for i, e in enumerate(entries) if _ran(e, r)][-1:])
    return [e for i, e in enumerate(entries) if i in used]


def record_env(meta: dict, record) -> dict | None:
    """The env that measured `record` (its run_id, env_id, case_id and start) of the run of run.json `meta`: its
    shard's resume's or its shard's, else its run's resume's (resumed_envs), else its machine's in `envs` (an older
    merge, a run resumed on another machine); None where `meta` lists none (the run's own `env` measured it)."""
    for e in _shards(meta):
        if e.get("run_id") == record.run_id:
            if (env := _resumed(e, record)) is not None:
                return env
            if e.get("env_id") == record.env_id:
                return e["env"]
    if (env := _resumed(meta, record)) is not None:
        return env
    envs = meta.get("envs")
    env = envs.get(record.env_id) if isinstance(envs, dict) and isinstance(record.env_id, str) else None
    return env if isinstance(env, dict) else None


def record_gpu(meta: dict, record) -> dict | None:
    """The GPU of its environment that `record` (a bench.records.Record) was measured on, or None (a CPU device, no
    GPU recorded): bench.env.measured_gpu of its device in record_env's env."""
    device = record.device if isinstance(record.device, str) and record.device else meta.get("device")
    env = record_env(meta, record) or meta.get("env")
    return measured_gpu(device, env if isinstance(env, dict) else None)


def measured_by(meta: dict) -> list[dict]:
    """{device, env, env_id} of each shard, machine or resume that measured the run of run.json `meta`, in its order:
    a merged run's shards (each followed by its resumes on other GPUs), and any machine of `envs` none of them names
    (a shard resumed on another machine); else the run's own; then the run's resumes on other GPUs."""
    device = meta.get("device")

    def source(e: dict) -> dict:  # a shard's entry or a resume's
        return {"device": e.get("device") or device, "env": e["env"], "env_id": e.get("env_id")}

    def resumes(holder: dict) -> list[dict]:
        return [source(e) for e in _resumes(holder)]

    out = []
    for e in _shards(meta):
        out += [source(e), *resumes(e)]
    envs = meta.get("envs") if isinstance(meta.get("envs"), dict) else {}
    named = {e.get("env_id") for e in _shards(meta)}
    out += [{"device": device, "env": env, "env_id": k} for k, env in envs.items()
            if k not in named and isinstance(env, dict)]
    own = {"device": device, "env": meta.get("env") if isinstance(meta.get("env"), dict) else {},
           "env_id": meta.get("env_id")}
    return (out or [own]) + resumes(meta)


def sources(meta: dict) -> list[tuple[str | None, dict]]:
    """(device, env) of each of measured_by."""
    return [(m["device"], m["env"]) for m in measured_by(meta)]


def gpus_used(meta: dict) -> list[dict]:
    """The distinct GPUs that measured the run of run.json `meta` (measured_by's, each as its device names it)."""
    found = {}
    for m in measured_by(meta):
        if (gpu := measured_gpu(m["device"], m["env"])) is not None:
            found.setdefault((m["env"].get("hostname"), *_key(gpu)) if not gpu.get("uuid") else gpu["uuid"], gpu)
    return list(found.values())


def gpu_label(gpu: dict) -> str:
    """A GPU among several of its machine: its name and NVML index (nvidia-smi's), else its UUID as torch saw it."""
    where = f"GPU {gpu.get('index')}" if gpu.get("source") == "nvml" else gpu.get("uuid")
    return f"{gpu.get('name') or '?'} ({where})" if where is not None else str(gpu.get("name") or "?")


def _key(gpu: dict | None) -> tuple:
    return (None,) * 3 if gpu is None else (gpu.get("uuid"), gpu.get("index"), gpu.get("name"))


def note_gpu(meta, env_id: str, env: dict, cases: list[str], finished: list, out) -> list[str]:
    """A resume of the run of `meta` (a bench.records.RunMeta) on a machine it has measured on (`env_id`), in `env`
    now, that is to run `cases`: where it runs them on another GPU of that machine than the run's env (or its
    machine's of `envs`) names, or the run has been resumed so before, a `resumed_envs` entry keeps its start, env,
    device and cases (record_env maps its records through it). The warning, where `finished` records of that machine
    were measured on another GPU than this one: the run now mixes them."""
    was = meta.to_json()
    gpu, entries = measured_gpu(meta.device, env), _resumes(was)
    base = (was.get("envs") or {}).get(env_id) or was.get("env")
    if gpu is None or (_key(gpu) == _key(measured_gpu(meta.device, base))
                       and not any(e.get("env_id") == env_id for e in entries)):
        return []  # a CPU run, or on the GPU it has measured on all along
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # as each record's started_at
    meta.extra[RESUMED] = [*entries, {"started_at": started, "env_id": env_id, "device": meta.device, "env": env,
                                      "cases": list(cases)}]
    running = set(cases)  # a failure --retry-failed runs again is replaced, not kept beside
    others = {gpu_label(g): g for r in finished if r.env_id == env_id and r.case_id not in running
              and (g := record_gpu(was, r)) is not None and _key(g) != _key(gpu)}
    if not others:
        return []
    visible = (env.get("env_vars") or {}).get("CUDA_VISIBLE_DEVICES")
    return [f"{out}: its finished cases were measured on {' and '.join(others)} and this resume runs the rest on "
            f"{gpu_label(gpu)} of the same machine (CUDA_VISIBLE_DEVICES={visible if visible is not None else 'unset'})"
            f": the run now mixes {len(others) + 1} GPUs under one env_id, each case kept under its own (run.json "
            f"{RESUMED}); a resume on the GPU its cases measured on keeps a run on one"]
