"""torchvision's FeaturePyramidNetwork (torchvision.ops; Lin et al. 2017), the FPN detection users pick, as the neck of
our detector in place of ours (impls.detection.backbone.FPN): the same backbone and head around it.

What torchvision 0.26's ops/feature_pyramid_network.py does, against ours:
- Laterals ("inner blocks"): a 1x1 conv with bias per level, no norm: the same as ours.
- Top-down: the merged map of the level above, nearest-upsampled to this level's size (F.interpolate(size=...,
  mode="nearest")) and added to its lateral, from stride 32 down: the same.
- Outputs ("layer blocks"): a 3x3 conv with bias and nothing after it (norm_layer=None, its default; a norm_layer would
  put a norm after the laterals too, which ours has not), where ours is a 3x3 conv without bias, GroupNorm and SiLU.
- It makes an output at every level it is given, where ours smooths only the levels the head reads: under CenterNet
  (stride 4 alone) its 3x3 convs at strides 8, 16 and 32 run for a head that never reads them, 2 * 9 * C^2 * H * W *
  (1/64 + 1/256 + 1/1024) FLOPs (C = 32 at quick size: 6.2 MFLOP on our FPN's 68 MFLOP), counted in image_flops.
- Init: kaiming_uniform_(a=1) weights and zero biases, where our convs keep nn.Conv2d's default: it trains from other
  weights, so it has trained weights of its own (impls/weights ships them at smoke and quick sizes).
- extra_blocks (LastLevelMaxPool's stride-64 "pool" map, RetinaNet's LastLevelP6P7) are left out: no head of ours
  reads above stride 32.
Our FPN's weights copied into it (laterals; 3x3 convs with zero bias) give our FPN's maps before its GroupNorm and
SiLU (tests/impls/test_detection_torchvision.py).

PyPI's torchvision wheels are CUDA builds: beside a CPU torch (2.13.0+cpu) torchvision 0.28.0 is installed but its
import raises ("operator torchvision::nms does not exist"). `unavailable` says why it cannot be used here, in one
line, whether it is missing or does not import; the suite records the case as skipped with that line. A torchvision
that imports but has moved FeaturePyramidNetwork raises ApiMoved, never a skip.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections import OrderedDict

import torch
from torch import Tensor, nn

from impls import libraries
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's

WRITTEN_FOR = "0.26.0"  # the GPU machine's, beside its torch 2.11


def pip_args(torch_version: str | None = None) -> str:
    """`pip install` arguments for the torchvision built for `torch_version` (default: the installed torch's).
    torchvision 0.(N + 15).P pairs with torch 2.N.P (from torch 2.1 on) and requires exactly that torch, so another
    release would replace the torch installed. A torch with a local tag (2.13.0+cpu, 2.11.0+cu126) came from
    PyTorch's index of that build, which holds the matching torchvision; PyPI's are CUDA builds."""
    public, _, local = (torch_version or torch.__version__).partition("+")
    parts = public.split(".")
    if len(parts) < 3 or parts[0] != "2" or not parts[1].isdigit() or not parts[2].isdigit():
        return "torchvision (the release built for this torch)"
    pin = f"torchvision==0.{int(parts[1]) + 15}.{parts[2]}"
    return f"{pin} --index-url https://download.pytorch.org/whl/{local}" if local else pin


LIBRARY = libraries.Library("torchvision", WRITTEN_FOR, "impls/detection/torchvision_fpn.py", pip_args())
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved


@functools.cache
def unavailable() -> str | None:
    """Why torchvision cannot be used here, in one line (not installed; installed but its import fails, with the
    exception's first line and, unless a dependency of its own is missing, the install line of the build for this
    torch); None where it imports. Cached: a failed import is not retried in a process."""
    if importlib.util.find_spec("torchvision") is None:
        return f"needs torchvision, which is not installed (pip install {LIBRARY.pip})"
    try:
        importlib.import_module("torchvision.ops")
    except Exception as e:  # noqa: BLE001  -- any failure to import is the reason, in one line, never a traceback
        first = (str(e).strip().splitlines() or [""])[0]
        why = f"{label()} does not import beside torch {torch.__version__} ({type(e).__name__}: {first})"
        if isinstance(e, ModuleNotFoundError):  # a dependency of its own is missing (pillow): that names it
            return why
        return f"{why}: install the build for this torch (pip install {LIBRARY.pip})"
    return None


@functools.cache
def api() -> type[nn.Module]:
    """torchvision.ops.FeaturePyramidNetwork; ImportError with `unavailable`'s line where torchvision cannot be used,
    ApiMoved where it lacks the class or its arguments."""
    if (why := unavailable()) is not None:
        raise ImportError(why)
    ops = importlib.import_module("torchvision.ops")
    return libraries.function(ops, "torchvision.ops", "FeaturePyramidNetwork", ("in_channels_list", "out_channels",
                                                                                 "extra_blocks", "norm_layer"), _moved)


class TorchvisionFPN(nn.Module):
    """torchvision's FeaturePyramidNetwork over the backbone's levels from the finest the head reads up to stride 32,
    at `channels` wide, its defaults kept (no norm, no extra blocks); forward returns the levels the head reads, as
    every neck does. Built only where torchvision imports (`unavailable`)."""

    unavailable = staticmethod(unavailable)

    def __init__(self, widths: dict[int, int], channels: int, strides: tuple[int, ...]):
        super().__init__()
        self.strides = strides
        self.inputs = tuple(s for s in sorted(widths) if s >= min(strides))  # finest first, as torchvision takes them
        self.fpn = api()([widths[s] for s in self.inputs], channels)

    def forward(self, feats: dict[int, Tensor]) -> dict[int, Tensor]:
        out = self.fpn(OrderedDict((str(s), feats[s]) for s in self.inputs))  # every level, finest first
        return {s: out[str(s)] for s in self.strides}
