"""A figure that draws byte counts in KiB, MiB or GiB names that unit in its hover text too: a hover reading
"peak_mem_bytes: 33.79" for 34,600 bytes is off by 1024x."""

import re

from reports.figures import figures_for, load_frame
from tests.runs import write_run


def _hover_names(fig, title: str) -> list[str]:
    return [re.search(r"<br>([^<]*): %\{y", t.hovertemplate).group(1) for t in fig.data
            if t.hovertemplate and "customdata[2]" in t.hovertemplate and t.name != "Pareto front"
            and fig.layout.title.text.startswith(title)]


def test_mla_peak_memory_hover_names_the_unit_it_is_drawn_in(tmp_path):
    decode = {"part": "decode", "shape": "tiny", "dtype": "float32", "batch": 2}
    records = [{"suite": "mla", "variant": v, "params": {**decode, "context": c},
                "metrics": {"decode_time_ms": 0.1, "prefill_time_ms": 0.2, "peak_mem_bytes": 34_600 * c // 32}}
               for v in ("mha", "mla_absorbed") for c in (32, 64)]
    frame = load_frame([write_run(tmp_path, "run", records, gpu=None)])
    (fig,) = [f for f in figures_for("mla", frame) if f.layout.title.text.startswith("Peak memory")]
    assert fig.layout.yaxis.title.text.startswith("peak bytes (KiB")
    names = _hover_names(fig, "Peak memory")
    assert names and all("KiB" in n for n in names), names


def test_moe_dispatch_peak_memory_hover_names_the_unit_it_is_drawn_in(tmp_path):
    dispatch = {"part": "dispatch", "top_k": 2, "dim": 32, "hidden": 64, "tokens": 128, "dtype": "float32"}
    records = [{"suite": "moe", "variant": v, "params": {**dispatch, "experts": e},
                "metrics": {"tokens_per_s": 1000.0, "peak_mem_bytes": 3 * 2**20 * e}}
               for v in ("loop", "grouped_mm") for e in (4, 8)]
    frame = load_frame([write_run(tmp_path, "run", records, gpu=None)])
    (fig,) = [f for f in figures_for("moe", frame) if f.layout.title.text.startswith("Dispatch peak memory")]
    names = _hover_names(fig, "Dispatch peak memory")
    assert names and all("MiB" in n for n in names), names
