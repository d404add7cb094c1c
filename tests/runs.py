"""Synthetic run directories for report, compare and dashboard tests: real schema, made-up numbers."""

from __future__ import annotations

import json
import random
from pathlib import Path

from bench.records import Record, RecordWriter, write_run_json

H200 = {"name": "NVIDIA H200", "memory_total_bytes": 150_000_000_000, "compute_capability": "9.0",
        "driver_version": "580.65", "sm_clock_mhz": 1980, "source": "nvml"}
A100 = {"name": "NVIDIA A100-SXM4-80GB", "memory_total_bytes": 85_000_000_000, "compute_capability": "8.0",
        "driver_version": "570.10", "sm_clock_mhz": 1410, "source": "nvml"}
H100 = {**H200, "name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85_000_000_000}


def env(gpu: dict | None = None, torch: str = "2.11.0") -> dict:
    return {"python_version": "3.12.3", "torch": torch, "torch_cuda": "13.0" if gpu else None, "triton": "3.6.0",
            "cpu_model": "AMD EPYC", "cpu_logical_cores": 16, "gpus": [gpu] if gpu else [], "hostname": "node1",
            "git": {"sha": "0123456789abcdef0123456789abcdef01234567", "dirty": False}}


def write_run(root: Path, name: str, records: list[dict], *, gpu: dict | None = H200, torch: str = "2.11.0",
              size: str = "quick", started_at: str = "2026-11-28T01:00:00Z", sha: str | None = None,
              declare: bool = True, run_id: str | None = None, declared: dict | None = None) -> Path:
    """A run directory with run.json and one record per dict (suite, variant, params, status, metrics, samples...),
    of run `run_id` (default: the folder's name).

    With `declare`, run.json carries what the registered suites of those records declare (as `bench run` writes
    it), or `declared` where given (those declarations, made elsewhere: a process that has not imported the suites
    and torch); without, it is a run of an older techbench that declared nothing."""
    environment = env(gpu, torch)
    if sha:
        environment["git"]["sha"] = sha
    env_id = f"{(gpu or {}).get('name', 'cpu')}-{torch}".replace(" ", "_")
    out = Path(root) / name
    run_id = run_id or name
    out.mkdir(parents=True)
    device = "cuda:0" if gpu else "cpu"
    write_run_json(out, {"schema": 1, "run_id": run_id, "argv": ["bench", "run", "--size", size], "size": size,
                         "device": device, "shard": "1/1", "variants": None, "started_at": started_at,
                         "finished_at": started_at, "env": environment, "env_id": env_id,
                         "git": environment["git"], "version": "0.1.0", "seed": 0,
                         **({"suites": declared or declarations({r["suite"] for r in records})} if declare else {})})
    with RecordWriter(out / "records.jsonl") as w:
        for r in records:
            params = r.get("params", {})
            case = f"{r['suite']}/{r['variant']}/" + ",".join(f"{k}={params[k]}" for k in sorted(params))
            w.write(Record(run_id=run_id, suite=r["suite"], variant=r["variant"], params=params, case_id=case,
                           status=r.get("status", "ok"), metrics=r.get("metrics", {}), samples=r.get("samples", {}),
                           error=r.get("error"), device=device, started_at=started_at, elapsed_s=1.0, env_id=env_id,
                           nonfinite=r.get("nonfinite", {})))
    return out


def declarations(names: set[str]) -> dict:
    from bench.suite import discover

    suites = discover()
    return {n: suites[n].describe() for n in sorted(names) if n in suites}


def samples(median: float, spread: float = 0.02, n: int = 30, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [median * (1 + rng.gauss(0, spread)) for _ in range(n)]


def checkpointing_records(scale: float = 1.0, seed: int = 0) -> list[dict]:
    """The five checkpointing variants at two shapes, plus an oom, an error and a skipped case."""
    out = []
    for batch in (4, 8):
        for i, (variant, time_x, mem_x) in enumerate([("none", 1.0, 1.0), ("full", 1.3, 0.3), ("sqrt", 1.35, 0.5),
                                                      ("selective", 1.05, 0.7), ("offload", 1.2, 0.4)]):
            t = 100.0 * batch / 4 * time_x * scale
            s = samples(t, seed=seed * 100 + batch * 10 + i)
            out.append({"suite": "checkpointing", "variant": variant,
                        "params": {"batch": batch, "d_model": 256, "dtype": "bfloat16", "layers": 8, "seq": 256},
                        "metrics": {"step_time_ms": sorted(s)[len(s) // 2], "peak_mem_bytes": int(1e9 * batch * mem_x),
                                    "activation_bytes": int(8e8 * batch * mem_x), "time_overhead_x": time_x,
                                    "mem_saving_x": 1 / mem_x, "recompute_flops_x": 1 + (time_x - 1) / 1.3,
                                    "tokens_per_s": 1e3 * batch * 256 / t, "energy_j": 50.0 * time_x},
                        "samples": {"step_time_ms": s}})
    params = {"batch": 16, "d_model": 256, "dtype": "bfloat16", "layers": 8, "seq": 256}
    out += [{"suite": "checkpointing", "variant": "none", "params": params, "status": "oom",
             "error": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"},
            {"suite": "checkpointing", "variant": "selective", "params": params, "status": "error",
             "error": "Traceback (most recent call last):\n  ...\nRuntimeError: boom"},
            {"suite": "checkpointing", "variant": "offload", "params": params, "status": "skipped",
             "error": "needs a CUDA device"}]
    return out


# mtp's smoke grid point: a case_id of 170 characters with no space to break at
LONG_PARAMS = {"batch": 8, "d_model": 32, "dtype": "float32", "heads": 2, "layers": 2, "lr": 0.003, "new_tokens": 16,
               "phrases": 16, "prompt_len": 8, "prompts": 2, "seq": 17, "shape": "tiny", "steps": 30,
               "train_tokens": 20000, "vocab": 32}


def long_case_records(metrics: int = 3, scale: float = 1.0, seed: int = 0) -> list[dict]:
    """Cases of suite `long` with ids as long as mtp's: three variants at LONG_PARAMS, and variant `two` at two
    points that differ in one param in the middle of the id (prompt_len); each with a timing and `metrics` - 1
    counts of bytes."""
    points = [("a", LONG_PARAMS), ("b", LONG_PARAMS), ("c", LONG_PARAMS),
              *(("two", {**LONG_PARAMS, "prompt_len": n}) for n in (8, 16))]
    out = []
    for i, (variant, params) in enumerate(points):
        s = samples(10.0 * scale, seed=seed * 10 + i)
        counts = {f"count_{k:02d}_bytes": 1000 * (k + 1) for k in range(metrics - 1)}
        out.append({"suite": "long", "variant": variant, "params": params, "samples": {"step_time_ms": s},
                    "metrics": {"step_time_ms": sorted(s)[len(s) // 2], **counts}})
    return out


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def on_device(run: Path, device: str, gpus: list[dict], visible: str | None = None) -> Path:
    """`run` as measured on `device` of a machine with `gpus` (as NVML lists them, by index), with
    CUDA_VISIBLE_DEVICES=`visible` where given: its run.json and each record's device."""
    meta = json.loads((run / "run.json").read_text())
    meta["env"].update(gpus=[{**g, "index": i} for i, g in enumerate(gpus)],
                       env_vars={"CUDA_VISIBLE_DEVICES": visible} if visible is not None else {})
    (run / "run.json").write_text(json.dumps({**meta, "device": device}))
    lines = [{**r, "device": device} for r in json_lines(run / "records.jsonl")]
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def shards_on_one_machine(root: Path, gpus: list[dict]) -> list[Path]:
    """A sweep split over the GPUs of one machine (NVML lists each, by index): shard I/N run with
    CUDA_VISIBLE_DEVICES=I-1 on its cuda:0, one checkpointing case (b=I) each. The shards share an env_id."""
    out = []
    for i in range(1, len(gpus) + 1):
        run = write_run(root, f"shard-{i}", [{"suite": "checkpointing", "variant": "none", "params": {"b": i},
                                              "metrics": {"step_time_ms": 1.0, "peak_mem_bytes": 100}}])
        meta = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**meta, "shard": f"{i}/{len(gpus)}"}))
        out.append(on_device(run, "cuda:0", gpus, str(i - 1)))
    return out
