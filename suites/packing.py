"""Sequence packing: how much of each row is real tokens, per packer and length distribution, what the packer costs
the data loader, and what a training step on its rows gets done.

Packing runs in the data loader, on the host, whatever the training device: the packers are timed on the CPU. The
training step takes `train_rows` rows spread over each packing, the same row budget for every packer, on the
device: effective tokens/s counts the real tokens in them. Attention over a packed row is dense SDPA with a
document mask, which pays for the whole row squared; a varlen kernel (see the rmpad suite) pays per sample. Packed
rows restart positions per sample and confine attention to each sample; `ffd_naive` packs alike but attends across
the whole row, and loss_diff (against the same samples trained one at a time) shows what that cross-contamination
costs.

`ffd_liger` trains the ffd rows with the LM head and cross-entropy fused by Liger-Kernel (the library users pick,
declared in `libraries`; impls.packing.liger), so the [tokens, vocab] logits are never whole: its peak_mem_bytes reads
against ffd's, and the case also runs the plain head on the same weights and rows (head_mem_saving_x, head_loss_diff).
Its cross-entropy is a Triton kernel that needs a CUDA device: on a CPU the case is skipped with that reason.

`trl_bfd` is Hugging Face TRL's packing, the one SFTTrainer(packing=True) runs (impls.packing.trl_bfd, declared in
`libraries`): trl.data_utils.pack_dataset(dataset, packing_length, strategy="bfd") on a datasets.Dataset holding the
same lengths as token lists. Its pack_time times pack_dataset alone on a Dataset built before the clock starts, as
ours time the packer on a prebuilt lengths array; its rows are read back into a Packing after, untimed, and measured
(efficiency, rows, the training step) as ours are. It is our ffd's best-fit decreasing run per batch of 1,000
sequences (Dataset.map's default), which leaves each batch's last rows part-empty.

`hf_group_by_length` is the order transformers' Trainer trains in with group_by_length=True (transformers 5.23 spells
it train_sampling_strategy="group_by_length"; impls.packing.hf_grouped, declared in `libraries`): LengthGroupedSampler's
random megabatches of up to 50 batches, each sorted longest first, each batch padded to its longest as
DataCollatorWithPadding pads. Its pack_time times what ours do: the lengths checked (to_items), the order
(get_length_grouped_indices, on the lengths as a Python list, what the sampler holds, built before the clock) and the
rows padded per batch, as bucketing builds its own. It pads more than `bucketing`, which sorts the whole dataset.

transformers' padding-free collator (DataCollatorWithFlattening) is measured in the rmpad suite, not here: it flattens
whatever batch the loader hands it into one row, removing that batch's padding, and chooses no rows itself, so it is
no packer; its loss equality (the library keeping flattened samples apart) is rmpad's loss_diff.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from bench.memory import peak_bytes
from bench.metrics import Metric, timing
from bench.suite import (
    Measurement,
    NotPlannable,
    Relative,
    Skip,
    Suite,
    Workload,
    build_module,
    register,
    requires,
    run_dtype,
)
from bench.timing import Timing, time_fn
from bench.work import Work, rates
from impls.packing import PACKERS, hf_grouped, liger, trl_bfd
from impls.packing.train import packed_loss, packed_rows, unpacked_loss
from impls.rmpad.lengths import make_lengths, pad_fraction
from impls.rmpad.reference import Decoder, DecoderConfig

DISTRIBUTIONS = ("uniform", "lognormal", "zipf", "bimodal")
PACKED_BY = {"ffd_naive": "ffd", "ffd_liger": "ffd"}  # variants that train another packer's rows: variant -> packer
LIGER = "ffd_liger"
TRL = "trl_bfd"
HF = "hf_group_by_length"
# TRL's packing holds each token twice, in and out, as int64 (impls.packing.trl_bfd); a plan runs it for real only up
# to 2 GiB of them: at full size (1M sequences, 4 GB at rows of 512) one case took 35 s and 10 GB, and the rows of
# 4096 would not fit a 23 GB host
TRL_TOKEN_BYTES, PLAN_HOST_BYTES = 16, 2 << 30
SHAPES = {
    "tiny": {"d_model": 32, "heads": 2, "layers": 2, "vocab": 128},
    "small": {"d_model": 64, "heads": 4, "layers": 2, "vocab": 1024},
    "350m": {"d_model": 1024, "heads": 16, "layers": 8, "vocab": 32000},
}
GRIDS = {
    # sequences in the dataset, packing lengths (also the longest sample), samples per batch for padding packers,
    # rows per training step, model shape, length distributions
    "smoke": {"sequences": 2_000, "packing_length": (512,), "batch": 8, "train_rows": 2, "shape": "tiny",
              "dists": DISTRIBUTIONS},
    # quick leaves zipf out: its lengths are long-tailed like lognormal's (0.89 padding at 512 against 0.90), and its
    # six cases were the slowest of the suite (20 s of a first run's 5-minute budget)
    "quick": {"sequences": 100_000, "packing_length": (512,), "batch": 8, "train_rows": 4, "shape": "small",
              "dists": ("uniform", "lognormal", "bimodal")},
    # 1M lengths: the size at which a packer's speed decides whether it can run per epoch in the loader
    "full": {"sequences": 1_000_000, "packing_length": (512, 2048, 4096), "batch": 32, "train_rows": 32,
             "shape": "350m", "dists": DISTRIBUTIONS},
}


@register
class Packing(Suite):
    name = "packing"
    description = "padding for throughput: real tokens per row capacity, per packer and length distribution"
    variants = {
        "pad_to_max": "reference: every sample its own row, padded to the packing length",
        "pad_to_batch_max": "dynamic padding: each batch padded to its longest sample",
        "bucketing": "length-sorted bucketing, then dynamic padding",
        "ffd": "best-fit-decreasing bin packing into rows of the packing length",
        "spfhp": "shortest-pack-first histogram packing (Krell et al. 2021)",
        "ffd_naive": "ffd rows trained with plain causal attention across samples (cross-contamination)",
        LIGER: "ffd rows, LM head + cross-entropy fused by Liger-Kernel (liger_fused_linear_cross_entropy): no "
               "[tokens, vocab] logits (CUDA)",
        TRL: "TRL's pack_dataset(strategy='bfd'), as SFTTrainer packs: best-fit decreasing per batch of 1,000 "
             "sequences; pack_time is pack_dataset alone, on a prebuilt datasets.Dataset",
        HF: "transformers' Trainer(group_by_length=True; in 5.23 train_sampling_strategy='group_by_length'): "
            "LengthGroupedSampler's order (random megabatches of up to 50 batches, each sorted longest first), each "
            "batch padded to its longest; pack_time is get_length_grouped_indices on the lengths as a list, with the "
            "lengths' check and the padded rows that ours time too",
    }
    libraries = {LIGER: liger.label(), TRL: trl_bfd.label(), HF: hf_grouped.label()}
    requires = {TRL: ("trl", trl_bfd.PIP), HF: ("transformers", hf_grouped.PIP)}
    relative = (
        Relative("efficiency_gain_x", "packing_efficiency"),
        Relative("rows_saving_x", "rows_per_epoch", invert=True),
        Relative("effective_speedup_x", "effective_tokens_per_s"),
    )
    metrics = (
        # the packer, on the host
        *timing("pack_time", "packing the dataset's lengths once (CPU)"),
        Metric("packing_efficiency", "exact", "higher", "real tokens / row capacity over the packing"),
        Metric("pad_fraction", "exact", "lower", "1 - packing_efficiency"),
        Metric("rows_per_epoch", "exact", "lower", "rows the packing makes of the dataset"),
        *rates("pack_time", "packer_", item="seq", what="of the dataset, packed"),
        Metric("dataset_pad_fraction", "exact", None, "padding's share with each sample padded to the packing length"),
        # the training step on the packed rows, on the device
        *timing("train_step", "one training step on train_rows packed rows"),
        *rates("train_step", "effective_", tokens=True, what="real tokens in the step's rows, padding left out"),
        Metric("loss_diff", "exact", "lower", "|packed loss - one-sample-at-a-time loss| / the latter, seeded model"),
        Metric("peak_mem_bytes", "exact", "lower", "peak bytes over one training step beyond what was live before it "
                                                   "(the CUDA allocator's; the live-tensor tracker's on CPU)"),
        Metric("head_loss_diff", "exact", "lower", "|loss - the plain LM head + cross-entropy's loss| / the latter, "
                                                   "same weights and rows (ffd_liger)"),
        Metric("head_mem_saving_x", "derived", "higher", "the plain LM head + cross-entropy step's peak_mem_bytes / "
               "this step's, same weights and rows (ffd_liger)", inputs=("peak_mem_bytes",)),
    )

    def grid(self, size, device):
        g = GRIDS[size]
        dtype = run_dtype(device)
        return [{"dist": dist, "sequences": g["sequences"], "packing_length": length, "batch": g["batch"],
                 "train_rows": g["train_rows"], **SHAPES[g["shape"]], "dtype": dtype}
                for length in g["packing_length"] for dist in g["dists"]]

    def workload(self, variant, params, device, target=None):
        if variant == LIGER:
            on_gpu = torch.device(target or device).type == "cuda"
            if device == "meta" and on_gpu:  # installed or not: said before what installing it would not change
                raise NotPlannable("Liger-Kernel's fused linear cross-entropy is a Triton kernel with no meta kernel")
            why = liger.unsupported(target or device)
            if why:
                raise Skip(why)
        if variant == TRL:  # the size first: installing trl would not make it plannable
            tokens = int(_lengths(params["dist"], params["sequences"], params["packing_length"]).sum())
            if device == "meta" and TRL_TOKEN_BYTES * tokens > PLAN_HOST_BYTES:
                raise NotPlannable(f"TRL's pack_dataset chooses the rows from a token-level datasets.Dataset, "
                                   f"{TRL_TOKEN_BYTES * tokens / 2**30:.1f} GiB of host memory at {tokens:,} tokens "
                                   "(planned up to 2 GiB); it makes ffd's rows per batch of 1,000 sequences: "
                                   "the plan of ffd's case is the step's")
            requires("trl", pip=trl_bfd.PIP)
        if variant == HF:
            requires("transformers", pip=hf_grouped.PIP)
        # the packer runs for real (on the host, as in the data loader): it decides which rows the step trains on
        packing = _packing(PACKED_BY.get(variant, variant), params["dist"], params["sequences"],
                           params["packing_length"], params["batch"])
        return train_workload(packing, params, device, _mask(variant), _loss(variant))[0]

    def measure(self, variant, params, device):
        if variant == LIGER:
            why = liger.unsupported(device)  # before any work, and without importing the library
            if why:
                raise Skip(why)
        if variant == TRL:
            requires("trl", pip=trl_bfd.PIP)
        if variant == HF:
            requires("transformers", pip=hf_grouped.PIP)
        lengths = make_lengths(params["dist"], params["sequences"], params["packing_length"], seed=0)
        length, batch = params["packing_length"], params["batch"]
        out = {}
        if variant == TRL:
            trl_bfd.api()  # imported before the clock (~5 s, transformers)
            data = trl_bfd.dataset(trl_bfd.to_items(lengths, length, batch, "reject").length)

            def run():
                out["packed"] = trl_bfd.pack(data, length)
        elif variant == HF:
            grouped = hf_grouped.api()  # imported before the clock (0.4 s after torch)
            held = hf_grouped.to_items(lengths, length, batch, "reject").length.tolist()  # what the sampler holds

            def run():  # the same work as ours: lengths checked, the order, then each batch's rows padded
                items = hf_grouped.to_items(lengths, length, batch, "reject")
                order = np.asarray(grouped(held, batch, generator=hf_grouped.generator(0)), dtype=np.int64)
                out["packing"] = hf_grouped.rows(items, order, batch)
        else:
            pack = PACKERS[PACKED_BY.get(variant, variant)]

            def run():
                out["packing"] = pack(lengths, packing_length=length, batch_size=batch)

        # One untimed call first, for every packer: TRL's first pack_dataset in a process ran 1.5x its later ones
        # (831 against 540-559 ms on 100k lengths), and with 2 timed calls the median would keep half of that. Then
        # at least 2 calls and 0.2 s of them: 2 at quick size, where a call takes 0.1-0.5 s (100k lengths)
        timing = time_fn(run, "cpu", warmup=1, min_reps=2, min_time_s=0.2)
        packing = trl_bfd.to_packing(out["packed"], lengths, length, batch) if variant == TRL else out["packing"]
        step, real, train_metrics = _train_step(packing, params, device, _mask(variant), _loss(variant))
        metrics = {
            "packing_efficiency": packing.efficiency,
            "pad_fraction": 1 - packing.efficiency,
            "rows_per_epoch": packing.n_rows,
            "dataset_pad_fraction": pad_fraction(lengths, params["packing_length"]),
            **train_metrics,
        }
        work = [Work("pack_time", "packer_", items=params["sequences"], item="seq"),
                Work("train_step", "effective_", tokens=real)]
        return Measurement(metrics, timed=step, timings={"pack_time": timing, "train_step": step}, work=work)


def _mask(variant: str) -> str:
    return "naive" if variant.endswith("_naive") else "document"


def _loss(variant: str):
    """The step's loss: the plain LM head + cross-entropy, or Liger-Kernel's fused one (same signature)."""
    return liger.packed_loss if variant == LIGER else packed_loss


@functools.lru_cache(maxsize=2)
def _lengths(dist: str, n: int, max_len: int) -> np.ndarray:
    """The dataset's lengths, kept for the next plan of the same params (every variant of a grid point packs them;
    1M of them take ~0.3 s to draw). An int64 array, read-only: a packer checks a list's every element (~0.3 s at
    1M), an int array's dtype."""
    lengths = np.asarray(make_lengths(dist, n, max_len, seed=0), dtype=np.int64)
    lengths.flags.writeable = False
    return lengths


@functools.lru_cache(maxsize=2)  # a point's: ffd's, until its variants are planned (~32 MB at 1M lengths)
def _packing(packer: str, dist: str, n: int, packing_length: int, batch: int):
    """A packer's packing of the dataset's lengths, kept for the next plan of the same data (ffd's variants pack
    alike)."""
    pack = {TRL: trl_bfd.trl_bfd, HF: hf_grouped.hf_group_by_length}.get(packer) or PACKERS[packer]
    return pack(_lengths(dist, n, packing_length), packing_length=packing_length, batch_size=batch)


def train_workload(packing, params, device: str, mask: str, loss=packed_loss) -> tuple[Workload, int, tuple]:
    """The training step on `train_rows` rows spread over the packing: (its workload, the real tokens in its rows, the
    rows and their tensors). On meta the rows' ids, positions and document ids keep their values, so the step's
    masks and loss targets take the shapes they take on the device."""
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab=params["vocab"], d_model=params["d_model"], n_heads=params["heads"],
                        n_layers=params["layers"])
    model = build_module(lambda: Decoder(cfg), device, getattr(torch, params["dtype"]))
    k = min(params["train_rows"], packing.n_rows)
    # rows spread evenly over the epoch: a packer's first rows are not typical (ffd opens rows longest first)
    rows = sorted({round(i * (packing.n_rows - 1) / max(1, k - 1)) for i in range(k)})
    tensors = packed_rows(packing, rows, cfg.vocab, device)
    real = int(tensors[3].sum())

    def clear():
        model.zero_grad(set_to_none=True)

    def step():
        clear()
        loss(model, *tensors, mask=mask).backward()

    # stateless, as rmpad's decoder
    return Workload(step, modules=(model,), clear=clear, stateless=True), real, (model, rows, tensors)


def _train_step(packing, params, device: str, mask: str, loss=packed_loss) -> tuple[Timing, int, dict]:
    """The train step's timing on rows spread over the packing, the real tokens in them, and its metrics: the relative
    loss gap to one sample at a time, the step's peak memory, and for the fused head both of those against the plain
    head on the same weights and rows."""
    w, real, (model, rows, tensors) = train_workload(packing, params, device, mask, loss)
    with torch.no_grad():
        ref = unpacked_loss(model, packing, rows, params["vocab"], device).item()
        value = loss(model, *tensors, mask=mask).item()
    w.step()  # warm-up (Triton's compiles, for the fused head)
    peak = peak_bytes(w.step, device, w.clear)
    metrics = {"loss_diff": abs(value - ref) / abs(ref), "peak_mem_bytes": peak}
    if loss is not packed_loss:
        plain, _, _ = train_workload(packing, params, device, mask)  # the same seeded weights, the same rows
        with torch.no_grad():
            plain_value = packed_loss(plain.modules[0], *tensors, mask=mask).item()
        plain.step()
        metrics["head_loss_diff"] = abs(value - plain_value) / abs(plain_value)
        metrics["head_mem_saving_x"] = peak_bytes(plain.step, device, plain.clear) / peak
        del plain
    return time_fn(w.step, device, warmup=0), real, metrics  # the loss, warm-up and tracked steps above warmed up
