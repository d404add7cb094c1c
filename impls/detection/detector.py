"""The detector: shared backbone, a neck, a head; `detect(images, mode, scales)` runs single-scale inference (the
reference), an image pyramid, or a SNIP-style scale-aware pyramid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from impls.detection.backbone import NECKS, Backbone
from impls.detection.centernet import CenterNetHead
from impls.detection.fcos import FcosHead
from impls.detection.head import Detections, Head
from impls.detection.pyramid import pyramid_detect
from impls.detection.yolo import YoloHead

HEADS: dict[str, type[Head]] = {"yolo": YoloHead, "centernet": CenterNetHead, "fcos": FcosHead}
MODES = ("single", "pyramid", "snip")
Mode = Literal["single", "pyramid", "snip"]


class Detector(nn.Module):
    """Backbone -> neck -> head. Images [N, 3, H, W] in [0, 1], H and W multiples of 32.

    band: (lo, hi) object sizes sqrt(w h), in pixels of its input, that the detector sees well; mode "snip" keeps, at
    each scale, only the boxes that are in that band at that scale (pyramid.snip_ranges).
    """

    def __init__(self, head: str = "centernet", neck: str = "fpn", n_classes: int = 4, width: int = 16,
                 band: tuple[float, float] = (0.0, float("inf"))):
        super().__init__()
        if head not in HEADS or neck not in NECKS:
            raise ValueError(f"unknown head {head!r} or neck {neck!r} (heads: {', '.join(HEADS)}; "
                             f"necks: {', '.join(NECKS)})")
        channels = 4 * width  # the neck's common width: 64 at width 16
        self.backbone = Backbone(width)
        self.head = HEADS[head](n_classes, channels)
        self.neck = NECKS[neck](self.backbone.widths, channels, self.head.strides)
        self.band = band

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Raw head outputs."""
        return self.head(self.neck(self.backbone(images)))

    def loss(self, images: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        targets = self.head.encode(boxes, labels, tuple(images.shape[-2:]))
        return self.head.loss(self(images), targets)

    def single(self, images: Tensor, score_thresh: float = 0.05, max_dets: int = 100) -> list[Detections]:
        """One pass at the images' own size, the head's own post-processing."""
        return self.head.decode(self.head.predict(self(images)), tuple(images.shape[-2:]), score_thresh,
                                max_dets=max_dets)

    @torch.no_grad()
    def detect(self, images: Tensor, mode: Mode = "single", scales: Sequence[float] = (1.0,),
               score_thresh: float = 0.05, nms_iou: float = 0.5, max_dets: int = 100) -> list[Detections]:
        """Per image Detections (boxes xyxy in the input's pixels, scores, labels).

        single: one pass, scales ignored. pyramid: one pass per scale (sides rounded to multiples of 32), boxes
        mapped back and merged by class-wise NMS at nms_iou. snip: pyramid, each scale keeping the boxes whose size
        there falls in `band` (the finest scale also the smaller ones, the coarsest the larger).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (valid: {', '.join(MODES)})")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"need images [N, 3, H, W], got {tuple(images.shape)}")
        if mode == "single":
            return self.single(images, score_thresh, max_dets)
        return pyramid_detect(lambda x: self.single(x, score_thresh, max_dets), images, scales, nms_iou, max_dets,
                              self.band if mode == "snip" else None)
