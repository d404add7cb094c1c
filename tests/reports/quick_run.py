"""A quick run on a CPU as a newcomer's first run leaves it, in records: skipped cases at the expert counts and pad
fractions their params give, a detection case that timed out, world size 1 only, and timings whose samples were noisy.
Real schema and names (run.json declares what the registered suites declare); made-up numbers."""

from __future__ import annotations

from pathlib import Path

from tests.runs import checkpointing_records, samples, write_run

PAD_FRACTIONS = {"uniform": 0.41, "lognormal": 0.82, "zipf": 0.86}  # pad fraction each length distribution makes
EXPERTS = (8, 16, 64)
SKIPPED_EXPERTS = (8, 64)  # grouped_triton needs CUDA: skipped where the quick grid asks for it
MAX_VIO = {"aux_loss": (0.9, 0.85, 0.95), "sigmoid_aux_loss": (0.7, 0.6, 0.8), "aux_free": (0.3, 0.1, 0.2),
           "aux_free_seqaux": (0.3, 0.12, 0.22), "node_limited": (0.75, 0.7, 0.78)}  # batch, train, global
NOISY_CHECKPOINTING = {("full", 4), ("none", 8)}  # (variant, batch): the second is batch 8's reference


def _timing(name: str, median: float, noisy: bool) -> dict:
    return {f"{name}_ms": median, f"{name}_noisy": noisy}


def _checkpointing() -> list[dict]:
    out = checkpointing_records()
    for r in out:
        if r.get("status", "ok") == "ok":
            r["metrics"]["step_time_noisy"] = (r["variant"], r["params"]["batch"]) in NOISY_CHECKPOINTING
    return out


def _moe() -> list[dict]:
    out = []
    balance = {"part": "balance", "experts": 8, "top_k": 4, "dim": 32, "steps": 30}
    for variant, (batch, train, glob) in MAX_VIO.items():
        out.append({"suite": "moe", "variant": variant, "params": balance,
                    "metrics": {"max_vio_batch": batch, "max_vio_train": train, "max_vio_global": glob,
                                "final_loss": 4.1, "perplexity": 61.0},
                    "samples": {"max_vio_curve": samples(batch, spread=0.3, n=30),
                                "load_curve": [(1 + glob * (-1) ** e) / 8 for e in range(8)]}})
    for experts in EXPERTS:
        params = {"part": "dispatch", "tokens": 2048, "experts": experts, "top_k": 2, "dim": 256, "hidden": 512,
                  "dtype": "float32"}
        for i, variant in enumerate(("loop", "grouped_mm", "grouped_torch")):
            t = (4.0 + experts / 8) / (1 + i)
            out.append({"suite": "moe", "variant": variant, "params": params,
                        "metrics": {**_timing("step_time", t, False), "tokens_per_s": 2048e3 / t,
                                    "peak_mem_bytes": 2 ** 20 * (40 + experts)}})
        if experts in SKIPPED_EXPERTS:
            out.append({"suite": "moe", "variant": "grouped_triton", "params": params, "status": "skipped",
                        "error": "the Triton grouped GEMM needs a CUDA device"})
    return out


def _rmpad() -> list[dict]:
    out = []
    for dist, pad in PAD_FRACTIONS.items():
        params = {"d_model": 256, "heads": 4, "layers": 4, "vocab": 8192, "dist": dist, "max_len": 512,
                  "real_tokens": 8192, "mode": "train", "dtype": "float32"}
        for variant, time_x in (("padded", 1.0), ("segments", 1 - pad / 2)):
            t = 50.0 * time_x
            out.append({"suite": "rmpad", "variant": variant, "params": params,
                        "metrics": {**_timing("step_time", t, False), "pad_fraction": pad,
                                    "peak_mem_bytes": int(1e8 * time_x), "speedup_x": 1 / time_x,
                                    "mem_saving_x": 1 / time_x}})
        for variant, why in (("flex", "FlexAttention does not support backward on CPU"),
                             ("flash", "flash_attn is not importable")):
            out.append({"suite": "rmpad", "variant": variant, "params": params, "status": "skipped", "error": why})
    return out


def _detection() -> list[dict]:
    out = []
    params = {"head": "centernet", "resolution": 128, "train": "quick", "width": 16, "train_steps": 400,
              "n_test": 64, "batch": 4}
    for variant, latency, ap in (("single", 20.0, 0.2), ("pyramid", 55.0, 0.3), ("fpn", 24.0, 0.27),
                                 ("spp", 22.0, 0.22)):
        out.append({"suite": "detection", "variant": variant, "params": params,
                    "metrics": {**_timing("latency", latency, True), **_timing("batch_time", 3 * latency, True),
                                "ap": ap, "ap_small": ap / 2, "image_flops": int(latency * 1e8),
                                "time_overhead_x": latency / 20.0}})
    out.append({"suite": "detection", "variant": "snip", "params": params, "status": "timeout",
                "error": "no result in 120 s"})
    return out


def _distributed() -> list[dict]:
    out = []
    fsdp = {"d_model": 256, "layers": 8, "seq": 256, "batch": 4, "world_size": 1}
    for variant, t, mem in (("none", 80.0, 4e8), ("full", 100.0, 1.5e8)):
        out.append({"suite": "fsdp_checkpointing", "variant": variant, "params": fsdp,
                    "metrics": {**_timing("step_time", t, False), "peak_mem_bytes": int(mem)}})
    ep = {"dim": 256, "experts": 8, "top_k": 2, "hidden": 512, "tokens": 2048, "world_size": 1}
    for variant, t in (("replicated", 30.0), ("ep", 33.0)):
        out.append({"suite": "moe_ep", "variant": variant, "params": ep,
                    "metrics": {**_timing("step_time", t, False), "peak_mem_bytes": int(3e8)}})
    return out


def _mtp() -> list[dict]:
    params = {"shape": "small", "d_model": 128, "layers": 4, "seq": 129, "batch": 16, "steps": 300}
    out = [{"suite": "mtp", "variant": "plain", "params": params,
            "metrics": {"time_overhead_x": 1.0, "mem_overhead_x": 1.0, "flops_overhead_x": 1.0}}]
    for variant, cost, speedup in (("mtp", 1.6, 0.7), ("mtp_d2", 2.2, 0.6)):  # bars that cross the y = 1 line
        out.append({"suite": "mtp", "variant": variant, "params": params,
                    "metrics": {"time_overhead_x": cost, "mem_overhead_x": cost, "flops_overhead_x": cost,
                                "acceptance_rate": 0.5, "decode_acceptance_rate": 0.3, "speedup_x": speedup,
                                "greedy_tokens_per_s": 1000.0, "decode_tokens_per_s": 1000.0 * speedup}})
    return out


def _samplers() -> list[dict]:
    out = []
    floor = {"sliced_w2_floor": 0.12, "sliced_w2_floor_sd": 0.04}  # exact samples score up to 0.2
    for variant, quality in (("ddpm", (1.4, 0.6, 0.09)), ("ddim", (1.3, 0.3, 0.1))):  # DDPM ends under the floor
        for nfe, q in zip((1, 8, 64), quality):
            out.append({"suite": "samplers", "variant": variant,
                        "params": {"target": "gmm2d", "model": "exact", "nfe_budget": nfe, "n": 500},
                        "metrics": {"nfe": nfe, **_timing("sample_time", 0.1 * nfe, False), "sliced_w2": q, **floor}})
    return out


def write_quick_run(root: Path, name: str = "quick") -> Path:
    """The run directory, on a machine without a GPU."""
    records = _checkpointing() + _moe() + _rmpad() + _detection() + _distributed() + _mtp() + _samplers()
    return write_run(root, name, records, gpu=None)
