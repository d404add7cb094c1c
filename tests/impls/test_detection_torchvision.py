"""torchvision in the detection suite: a torchvision that is installed but does not import (PyPI's wheels are CUDA
builds; beside a CPU torch their import raises) leaves detection importable, its NMS in plain torch, and its FPN
variant skipped with the cause in one line. Where torchvision imports, its FeaturePyramidNetwork given our FPN's
weights gives our FPN's maps before their GroupNorm and SiLU, and costs exactly its extra 3x3 outputs in FLOPs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from impls.detection import torchvision_fpn as tvf
from impls.detection.backbone import FPN, NECKS
from impls.detection.detector import Detector
from tests.optional import needs

ROOT = Path(__file__).resolve().parents[2]
# what torchvision 0.28.0 from PyPI (a CUDA build) raises on import beside torch 2.13.0+cpu
BROKEN = "operator torchvision::nms does not exist"
WHY = tvf.unavailable()  # where torchvision imports (the GPU machine's torch 2.11 and torchvision 0.26), None
NEEDS = pytest.mark.skipif(WHY is not None, reason=str(WHY))


@pytest.fixture
def broken_torchvision(tmp_path):
    """A folder holding a torchvision whose import raises as that build's does, to put first on a PYTHONPATH."""
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(f"raise RuntimeError({BROKEN!r})\n")
    return tmp_path


def test_a_torchvision_that_does_not_import_leaves_detection_on_plain_torch_nms(broken_torchvision):
    # before: boxes.py caught ImportError alone, so the RuntimeError ended the import of suites/detection.py, and
    # with it every bench command (`bench list` too: "bench: error: .../suites/detection.py:27: RuntimeError")
    script = ("import torch; from impls.detection import boxes; "
              "print(boxes.torchvision_nms(), boxes.nms(torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2.1], [5, 5, 6, 6]]), "
              "torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken_torchvision), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split(maxsplit=1) == ["False", "[0, 2]\n"]


# --- torchvision's FPN as a neck (impls/detection/torchvision_fpn.py) -----------------------------------------------

WIDTHS = {4: 8, 8: 16, 16: 32, 32: 64}  # the backbone's at width 8 (smoke and quick)
CHANNELS = 32


@pytest.fixture
def fresh_unavailable():
    """tvf.unavailable with nothing cached, before and after (api's answer rests on it)."""
    for cached in (tvf.unavailable, tvf.api):
        cached.cache_clear()
    yield tvf.unavailable
    for cached in (tvf.unavailable, tvf.api):
        cached.cache_clear()


def _torchvision_modules() -> list[str]:
    return [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]


@pytest.fixture
def broken_here(broken_torchvision, fresh_unavailable, monkeypatch):
    """This process imports the broken torchvision; tvf.unavailable. After: whatever it imported of the fake is gone
    (a fake that imported would otherwise answer every later import) and the real one, where imported, is back."""
    real = {m: sys.modules.pop(m) for m in _torchvision_modules()}
    monkeypatch.syspath_prepend(str(broken_torchvision))
    yield fresh_unavailable
    for m in _torchvision_modules():
        del sys.modules[m]
    sys.modules.update(real)


def test_its_install_line_pins_the_torchvision_built_for_the_torch_installed():
    # torchvision 0.(N + 15).P requires torch==2.N.P exactly: any other pin makes pip replace the torch installed
    assert tvf.pip_args("2.11.0") == "torchvision==0.26.0"
    assert tvf.pip_args("2.13.0+cpu") == "torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu"
    assert tvf.pip_args("2.11.0+cu130").endswith("0.26.0 --index-url https://download.pytorch.org/whl/cu130")
    assert tvf.pip_args("3.0.0") == "torchvision (the release built for this torch)"  # no rule known: no guess


def test_a_torchvision_that_does_not_import_is_one_line_naming_why(broken_here):
    why = broken_here()
    assert why == (f"{tvf.label()} does not import beside torch {torch.__version__} (RuntimeError: {BROKEN}): "
                   f"install the build for this torch (pip install {tvf.pip_args()})")
    with pytest.raises(ImportError, match="does not import beside torch"):
        NECKS["torchvision_fpn"](WIDTHS, CHANNELS, (4,))


def test_a_dependency_it_lacks_is_named_without_a_reinstall_line(broken_here, broken_torchvision):
    # torchvision imports PIL (pillow), which the GPU machine's image may lack: reinstalling torchvision is no fix
    (broken_torchvision / "torchvision" / "__init__.py").write_text("import techbench_no_such_pil\n")
    assert broken_here() == (f"{tvf.label()} does not import beside torch {torch.__version__} (ModuleNotFoundError: "
                             "No module named 'techbench_no_such_pil')")


def test_a_torchvision_without_its_fpn_is_a_broken_contract_not_a_skip(broken_here, broken_torchvision):
    (broken_torchvision / "torchvision" / "__init__.py").write_text("")
    (broken_torchvision / "torchvision" / "ops.py").write_text("")
    assert broken_here() is None
    with pytest.raises(tvf.ApiMoved, match="torchvision.ops no longer has FeaturePyramidNetwork"):
        NECKS["torchvision_fpn"](WIDTHS, CHANNELS, (4,))


def test_a_missing_torchvision_is_named_with_its_install_line(fresh_unavailable, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision"
                        else find_spec(name, *a))
    assert fresh_unavailable() == f"needs torchvision, which is not installed (pip install {tvf.pip_args()})"


@needs("pycocotools")
def test_the_suite_records_a_torchvision_that_does_not_import_as_skipped_with_that_line(broken_here):
    from bench import runner
    from bench.case import execute
    from bench.suite import SUITES, discover, unmet

    discover()
    suite = SUITES["detection"]
    assert unmet(suite, "torchvision_fpn", "cpu") is None  # installed: the runner starts the case
    case = runner.plan([suite], "smoke", "cpu", variants=["torchvision_fpn"])[0]
    result = execute(case, "cpu")
    assert (result["status"], result["error"]) == ("skipped", broken_here())
    assert "\n" not in result["error"] and BROKEN in result["error"]


def _copied(ours, theirs):
    """Our FPN's laterals and 3x3 conv weights into torchvision's (its 3x3 biases zeroed: ours has none)."""
    fpn = theirs.fpn
    with torch.no_grad():
        for i, s in enumerate(theirs.inputs):
            fpn.inner_blocks[i][0].weight.copy_(ours.lateral[str(s)].weight)
            fpn.inner_blocks[i][0].bias.copy_(ours.lateral[str(s)].bias)
            fpn.layer_blocks[i][0].weight.copy_(ours.smooth[str(s)][0].weight)
            fpn.layer_blocks[i][0].bias.zero_()


# float64: the same convolutions, upsampling and sums in the same order, so only rounding separates them
@NEEDS
@pytest.mark.parametrize("sides", [(16, 8, 4, 2), (25, 13, 7, 4)], ids=["halving", "odd"])
def test_weights_copied_from_our_fpn_give_its_maps_before_its_groupnorm_and_silu(sides):
    # every level read, so that ours smooths all four as torchvision does; odd sides (a stride-2 conv's ceil of
    # half): both upsample to the finer map's size, not by 2
    torch.manual_seed(0)
    strides = (4, 8, 16, 32)
    ours = FPN(WIDTHS, CHANNELS, strides).double()
    theirs = NECKS["torchvision_fpn"](WIDTHS, CHANNELS, strides).double()
    _copied(ours, theirs)
    feats = {s: torch.randn(2, WIDTHS[s], side, side + 1, dtype=torch.float64, requires_grad=True)
             for s, side in zip(strides, sides)}
    want = ours(feats)
    got = {s: ours.smooth[str(s)][1:](m) for s, m in theirs(feats).items()}  # ours adds GroupNorm and SiLU
    assert list(got) == list(strides)
    for s in strides:
        torch.testing.assert_close(got[s], want[s], atol=1e-12, rtol=1e-12)
    probe = {s: torch.randn_like(m) for s, m in want.items()}
    grads = [torch.autograd.grad(sum((probe[s] * out[s]).sum() for s in strides), list(feats.values()))
             for out in (want, got)]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


@NEEDS
@pytest.mark.parametrize("side", [64, 96])
def test_it_pays_exactly_its_3x3_outputs_at_the_levels_centernet_never_reads(side):
    # CenterNet reads stride 4 alone: ours smooths that level, torchvision's all four, so the detector's counted
    # FLOPs differ by the 3x3 convs at strides 8, 16, 32 (biases, norms and activations are not counted)
    torch.manual_seed(0)
    images, flops = torch.rand(1, 3, side, side), {}
    for neck in ("fpn", "torchvision_fpn"):
        model = Detector("centernet", neck, 4, 8).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(images)
        flops[neck] = counter.get_total_flops()
        assert out["heat"].shape == (1, 4, side // 4, side // 4)
    extra = sum(2 * 9 * CHANNELS * CHANNELS * (side // s) ** 2 for s in (8, 16, 32))
    assert flops["torchvision_fpn"] - flops["fpn"] == extra
