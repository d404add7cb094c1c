"""The run report's environment table: what tells the machines and software of its runs apart."""

from __future__ import annotations

import pandas as pd

from bench.env import measured_gpu
from bench.machines import gpu_label, sources
from bench.records import path_text, read_run_json
from reports.html import human_bytes, table


def environment(run_dirs, labels: dict[str, str], frame: pd.DataFrame) -> str:
    """One column per run, one row per field that tells machines and software apart. The GPU rows of a run measured
    on several machines or GPUs (a merge of shards: bench.machines) name each, " | " between them; "GPU used" says
    which of a machine's GPUs (shards split over them by CUDA_VISIBLE_DEVICES share all other rows)."""
    fields: dict[str, dict[str, str]] = {}
    for d in run_dirs:
        meta = read_run_json(d) or {}
        env = meta.get("env") or {}
        machines = sources(meta)  # the GPU each one's device names, else its first
        used = [(measured_gpu(device, e) or next(iter(e.get("gpus") or []), None), e) for device, e in machines]
        git = meta.get("git") or env.get("git") or {}
        cores = env.get("cpu_logical_cores")
        values = {
            "run_id": meta.get("run_id"),
            "GPU": _each(", ".join(g.get("name") or "?" for g in e.get("gpus") or []) or "none" for _, e in machines),
            "GPU used": _each(gpu_label(g) for g, e in used if g and len(e.get("gpus") or []) > 1),
            "GPU memory": _each(human_bytes(g.get("memory_total_bytes")) for g, _ in used if g),
            "driver": _each((g or e.get("nvml") or {}).get("driver_version") for g, e in used),
            "torch": env.get("torch"),
            "CUDA": env.get("torch_cuda"),
            "triton": env.get("triton"),
            "python": env.get("python_version"),
            "CPU": f"{env.get('cpu_model') or '?'}" + (f" ({cores} logical cores)" if cores else ""),
            "git": (git.get("sha") or "?")[:12] + (" (dirty)" if git.get("dirty") else "") if git else None,
            "env_id": meta.get("env_id"),
            "size": meta.get("size"),
            "device": meta.get("device"),
            "started": meta.get("started_at"),
            "finished": meta.get("finished_at") or "unfinished",
            "records": int((frame["run_dir"] == path_text(d)).sum()) if "run_dir" in frame else 0,
            "directory": path_text(d),
        }
        for field, value in values.items():
            fields.setdefault(field, {"": field})[labels[str(d)]] = "" if value is None else str(value)
    rows = [r for r in fields.values() if any(v for k, v in r.items() if k)]  # e.g. no GPU rows on CPU runs
    return table(rows, ["", *labels.values()])


def _each(values) -> str | None:
    """The distinct values, in order, " | " between them; None where there are none."""
    return " | ".join(dict.fromkeys(str(v) for v in values if v is not None)) or None
