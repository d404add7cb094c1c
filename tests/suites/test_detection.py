"""The detection suite at smoke size on CPU: AP and FLOPs are deterministic given the seeds and the trained weights,
so they are checked; times are not."""

import pandas as pd
import pytest

from impls.detection import torchvision_fpn
from impls.detection.pyramid import scaled_side
from reports.figures import figures_for, load_frame
from suites.detection import SCALES
from tests.optional import needs, require

try:
    import torchvision.ops  # noqa: F401

    TORCHVISION_IMPORTS = True
except Exception:  # noqa: BLE001  -- not installed, or installed and failing to import
    TORCHVISION_IMPORTS = False

QUALITY = ("ap", "ap50", "ap_small", "ap_medium", "ap_large", "ar_small")


@pytest.fixture(scope="module")
def cases(smoke_records):
    _, by_suite = smoke_records
    return {(r.variant, r.params["head"], r.params["resolution"]): r for rs in by_suite["detection"].values()
            for r in rs}


@needs("pycocotools")
def test_every_case_reports_cost_and_quality(cases):
    for key, r in cases.items():
        if r.status == "skipped":
            assert r.error, key
            continue
        assert r.status == "ok", (key, r.error)
        m = r.metrics
        assert m["latency_ms"] > 0 and m["images_per_s"] > 0 and m["peak_mem_bytes"] > 0
        assert isinstance(m["image_flops"], int) and m["image_flops"] > 0
        for q in QUALITY:  # NaN only where the test images hold no object of a bucket; 16 images hold all three
            assert 0 <= m[q] <= 1, (key, q, m[q])
        # which NMS ran, since it moves latency: torchvision's kernel exactly where torchvision imports (installed is
        # not enough: PyPI's CUDA build beside a CPU torch does not import)
        assert m["nms_torchvision"] is TORCHVISION_IMPORTS, key


@needs("pycocotools")
def test_pyramid_flops_are_the_sum_of_its_single_passes(cases):
    # Every map divides evenly at 64 and 128 px, so conv FLOPs scale exactly with pixels: a pyramid's count is the
    # single pass's times sum(side^2) / side_1^2 (5.0 for scales 1 and 2), with nothing else counted.
    for (variant, head, res), r in cases.items():
        if variant not in ("pyramid", "snip") or r.status != "ok":
            continue
        single = cases[("single", head, res)].metrics["image_flops"]
        ratio = sum(scaled_side(res, s) ** 2 for s in SCALES) / res**2
        assert r.metrics["image_flops"] == pytest.approx(single * ratio, rel=1e-9)
        assert r.metrics["image_flops"] > single
        assert r.metrics["flops_overhead_x"] == pytest.approx(ratio, rel=1e-9)
    # the same weights at the same scales: pyramid and snip differ only in which boxes they keep
    for (variant, head, res), r in cases.items():
        if variant == "snip":
            assert r.metrics["image_flops"] == cases[("pyramid", head, res)].metrics["image_flops"]


@needs("pycocotools")
def test_necks_cost_more_than_no_neck(cases):
    for (variant, head, res), r in cases.items():
        if variant in ("fpn", "spp", "torchvision_fpn") and r.status == "ok":
            assert r.metrics["image_flops"] > cases[("single", head, res)].metrics["image_flops"]


@needs("pycocotools")
def test_torchvision_fpn_runs_where_torchvision_imports_else_is_skipped_saying_why(cases):
    why = torchvision_fpn.unavailable()
    measured = [(key, r) for key, r in cases.items() if key[0] == "torchvision_fpn"]
    assert measured
    for (_, head, res), r in measured:
        if why is not None:  # not installed (the runner's line), or installed and not importing (the case's)
            assert (r.status, r.error) == ("skipped", why)
            continue
        assert r.status == "ok", r.error
        # beside our FPN: the same laterals and top-down sums, plus torchvision's 3x3 outputs at the levels CenterNet
        # does not read (strides 8, 16, 32), as impls/detection/torchvision_fpn.py counts them
        channels = 4 * r.params["width"]
        extra = sum(2 * 9 * channels**2 * (res // s) ** 2 for s in (8, 16, 32))
        assert r.metrics["image_flops"] == cases[("fpn", head, res)].metrics["image_flops"] + extra
        assert 0 <= r.metrics["ap"] <= 1


def test_pareto_front():
    require("plotly")
    from reports.figures.detection import pareto

    rows = pd.DataFrame({"latency_ms": [1.0, 2.0, 3.0, 4.0, 2.5], "ap": [0.1, 0.3, 0.2, 0.5, 0.3]})
    assert pareto(rows, "latency_ms", "ap").index.tolist() == [0, 1, 3]


@needs("plotly")
def test_report_draws_the_suite(smoke_run):
    out, _, _ = smoke_run
    frame = load_frame([out])
    figs = figures_for("detection", frame[frame["suite"] == "detection"])
    assert len(figs) == 3 and all(len(f.data) >= 1 for f in figs)
