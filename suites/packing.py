"""Sequence packing: how much of each row is real tokens, per packer and length distribution, and the packer's speed.

Packing runs in the data loader, on the host, whatever the training device: the packers are timed on the CPU.
"""

from __future__ import annotations

from bench.suite import Measurement, Relative, Suite, register
from bench.timing import time_fn
from impls.packing import PACKERS
from impls.rmpad.lengths import make_lengths, pad_fraction

DISTRIBUTIONS = ("uniform", "lognormal", "zipf", "bimodal")
GRIDS = {
    # sequences in the dataset, packing lengths (also the longest sample), samples per batch for padding packers
    "smoke": {"sequences": 2_000, "packing_length": (512,), "batch": 8},
    "quick": {"sequences": 100_000, "packing_length": (512, 2048), "batch": 8},
    # 1M lengths: the size at which a packer's speed decides whether it can run per epoch in the loader
    "full": {"sequences": 1_000_000, "packing_length": (512, 2048, 4096), "batch": 32},
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
    }
    relative = (
        Relative("efficiency_gain_x", "packing_efficiency"),
        Relative("rows_saving_x", "rows_per_epoch", invert=True),
    )

    def grid(self, size, device):
        g = GRIDS[size]
        return [{"dist": dist, "sequences": g["sequences"], "packing_length": length, "batch": g["batch"]}
                for length in g["packing_length"] for dist in DISTRIBUTIONS]

    def measure(self, variant, params, device):
        lengths = make_lengths(params["dist"], params["sequences"], params["packing_length"], seed=0)
        pack = PACKERS[variant]

        def run():
            return pack(lengths, packing_length=params["packing_length"], batch_size=params["batch"])

        packing = run()
        timing = time_fn(run, "cpu", warmup=1, min_reps=3, min_time_s=0.5)
        metrics = {
            **timing.metrics("pack_time"),
            "packing_efficiency": packing.efficiency,
            "pad_fraction": 1 - packing.efficiency,
            "rows_per_epoch": packing.n_rows,
            "packer_seqs_per_s": params["sequences"] / (timing.median_ms / 1e3),
            "dataset_pad_fraction": pad_fraction(lengths, params["packing_length"]),
        }
        return Measurement(metrics, timing.samples("pack_time"), timed=timing)
