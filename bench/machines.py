"""The environment and GPU that measured each record of a run directory, from its run.json.

A run's records were measured in its own `env`; a merged run's (bench.merge) by its shards, each in the environment
its own run.json recorded. env_id groups machines, not the GPUs of one: shards split over the GPUs of one machine by
CUDA_VISIBLE_DEVICES share an env_id (`envs` holds one of them), and each record names `cuda:0`. So merged_from keeps
each shard's env beside its run_id and env_id, and a record's run_id and env_id find its shard's.
"""

from __future__ import annotations

from bench.env import measured_gpu


def _shards(meta: dict) -> list[dict]:
    """The merged_from entries of run.json `meta` that keep their shard's env (a merge made since they do)."""
    entries = meta.get("merged_from") if isinstance(meta.get("merged_from"), list) else []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("env"), dict)]


def record_env(meta: dict, run_id, env_id) -> dict | None:
    """The env that measured a record (its `run_id` and `env_id`) of the run of run.json `meta`: its shard's, else its
    machine's in `envs` (an older merge, a run resumed on another machine); None where `meta` lists neither (the
    run's own `env` measured it)."""
    for e in _shards(meta):
        if e.get("run_id") == run_id and e.get("env_id") == env_id:
            return e["env"]
    envs = meta.get("envs")
    env = envs.get(env_id) if isinstance(envs, dict) and isinstance(env_id, str) else None
    return env if isinstance(env, dict) else None


def record_gpu(meta: dict, record) -> dict | None:
    """The GPU of its environment that `record` (a bench.records.Record) was measured on, or None (a CPU device, no
    GPU recorded): bench.env.measured_gpu of its device in record_env's env."""
    device = record.device if isinstance(record.device, str) and record.device else meta.get("device")
    env = record_env(meta, record.run_id, record.env_id) or meta.get("env")
    return measured_gpu(device, env if isinstance(env, dict) else None)


def sources(meta: dict) -> list[tuple[str | None, dict]]:
    """(device, env) of each shard or machine that measured the run of run.json `meta`, in its order: a merged run's
    shards, and any machine of `envs` none of them names (a shard resumed on another machine); else the run's own."""
    shards = _shards(meta)
    out = [(e.get("device") or meta.get("device"), e["env"]) for e in shards]
    envs = meta.get("envs") if isinstance(meta.get("envs"), dict) else {}
    named = {e.get("env_id") for e in shards}
    out += [(meta.get("device"), env) for k, env in envs.items() if k not in named and isinstance(env, dict)]
    return out or [(meta.get("device"), meta.get("env") if isinstance(meta.get("env"), dict) else {})]
