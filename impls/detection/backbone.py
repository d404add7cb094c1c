"""A small shared backbone (strided conv stages, features at strides 4/8/16/32) and the necks that turn its maps
into a head's inputs: none (1x1 laterals), FPN (Lin et al. 2017), SPP (He et al. 2014, as YOLOv3-SPP uses it), and
torchvision's FPN (impls.detection.torchvision_fpn, the library's, where torchvision imports)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.detection.torchvision_fpn import TorchvisionFPN

STRIDES = (4, 8, 16, 32)
SPP_KERNELS = (5, 9, 13)  # YOLOv3-SPP's stride-1 max-pools; at 128 px the stride-32 map is 4x4, so 13 is global


def conv(c_in: int, c_out: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    """Conv, GroupNorm, SiLU. GroupNorm, not BatchNorm: the same statistics at every pyramid scale and batch size."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.GroupNorm(min(8, c_out // 4), c_out), nn.SiLU()
    )


class Backbone(nn.Module):
    """Stem to stride 2, then four stages (a stride-2 conv and a conv each) to strides 4, 8, 16, 32 with widths
    w, 2w, 4w, 8w. Input [N, 3, H, W] in [0, 1] with H and W multiples of 32."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = conv(3, width, 2)
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stages = nn.ModuleList(
            nn.Sequential(conv(c_in, c_out, 2), conv(c_out, c_out)) for c_in, c_out in zip([width] + widths, widths)
        )
        self.widths = dict(zip(STRIDES, widths))

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        x = self.stem(x - 0.5)
        out = {}
        for s, stage in zip(STRIDES, self.stages):
            x = stage(x)
            out[s] = x  # [N, widths[s], H / s, W / s]
        return out


class Neck(nn.Module):
    """No neck: a 1x1 lateral per level to the common width, nothing shared across levels (the reference)."""

    def __init__(self, widths: dict[int, int], channels: int, strides: tuple[int, ...]):
        super().__init__()
        self.strides = strides
        self.lateral = nn.ModuleDict({str(s): nn.Conv2d(widths[s], channels, 1) for s in self._inputs(strides)})

    @staticmethod
    def unavailable() -> str | None:
        """Why this neck cannot be built here, in one line; None where it can (ours always can; torchvision's needs
        torchvision to import)."""
        return None

    def _inputs(self, strides: tuple[int, ...]) -> tuple[int, ...]:
        return strides

    def forward(self, feats: dict[int, Tensor]) -> dict[int, Tensor]:
        return {s: self.lateral[str(s)](feats[s]) for s in self.strides}


class FPN(Neck):
    """Feature Pyramid Network (Lin et al. 2017): top-down nearest-upsample-and-add from stride 32 down to the finest
    level the head reads, then a 3x3 conv per output against upsampling aliasing."""

    def __init__(self, widths: dict[int, int], channels: int, strides: tuple[int, ...]):
        super().__init__(widths, channels, strides)
        self.smooth = nn.ModuleDict({str(s): conv(channels, channels) for s in strides})

    def _inputs(self, strides: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s for s in STRIDES if s >= min(strides))

    def forward(self, feats: dict[int, Tensor]) -> dict[int, Tensor]:
        out, top = {}, None
        for s in sorted(self._inputs(self.strides), reverse=True):
            p = self.lateral[str(s)](feats[s])
            if top is not None:
                p = p + F.interpolate(top, size=p.shape[-2:], mode="nearest")
            top = p
            if s in self.strides:
                out[s] = self.smooth[str(s)](p)
        return out


class SPP(Neck):
    """Spatial pyramid pooling on the stride-32 map (He et al. 2014; YOLOv3-SPP's form: stride-1 max-pools 5/9/13
    concatenated with the input, fused by a 1x1), its context added once, upsampled, to every level the head reads:
    many receptive fields from one map, with no per-level top-down chain."""

    def __init__(self, widths: dict[int, int], channels: int, strides: tuple[int, ...]):
        super().__init__(widths, channels, strides)
        self.top = nn.Conv2d(widths[32], channels, 1)
        self.fuse = conv(channels * (1 + len(SPP_KERNELS)), channels, k=1)

    def forward(self, feats: dict[int, Tensor]) -> dict[int, Tensor]:
        t = self.top(feats[32])
        t = self.fuse(torch.cat([t] + [F.max_pool2d(t, k, 1, k // 2) for k in SPP_KERNELS], 1))
        out = {}
        for s in self.strides:
            p = self.lateral[str(s)](feats[s])
            out[s] = p + (t if s == 32 else F.interpolate(t, size=p.shape[-2:], mode="nearest"))
        return out


NECKS = {"none": Neck, "fpn": FPN, "spp": SPP, "torchvision_fpn": TorchvisionFPN}
