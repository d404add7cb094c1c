"""What every head shares: the Detections type, the Head interface (forward, predict, encode, loss, decode) and the
post-processing after decoding (score threshold, class-wise NMS, top-k).

Targets from encode() live in the same space as predict()'s activated outputs, so decode(encode(gt)) must give gt
back: each head's test checks that, under the conditions its docstring states.

Boxes everywhere are xyxy in continuous pixel coordinates, not normalised: pixel (row r, col c) covers [c, c + 1) x
[r, r + 1) (data.py renders it at sample points inside that square), the image spans [0, W] x [0, H], and a box's
width is x2 - x1 with no +1 (COCO's and torchvision's convention). A cell of a stride-s map at (row, col) covers
[col s, (col + 1) s) x [row s, (row + 1) s).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from impls.detection.backbone import conv
from impls.detection.boxes import batched_nms, check_targets


class Detections(NamedTuple):
    boxes: Tensor  # [K, 4] xyxy in pixels of the image passed in
    scores: Tensor  # [K] in [0, 1], decreasing
    labels: Tensor  # [K] int64


def empty(device=None) -> Detections:
    return Detections(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                      torch.zeros(0, dtype=torch.int64, device=device))


def postprocess(boxes: Tensor, scores: Tensor, labels: Tensor, score_thresh: float, nms_iou: float | None,
                max_dets: int) -> Detections:
    """Keep scores > score_thresh, then class-wise NMS at nms_iou (None: none), then the max_dets best."""
    keep = scores > score_thresh
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if nms_iou is not None:
        keep = batched_nms(boxes, scores, labels, nms_iou)
    else:
        keep = torch.sort(scores, descending=True, stable=True).indices
    keep = keep[:max_dets]
    return Detections(boxes[keep], scores[keep], labels[keep])


def tower(channels: int, depth: int = 2) -> nn.Sequential:
    return nn.Sequential(*(conv(channels, channels) for _ in range(depth)))


class Head(nn.Module):
    """A head reads the neck's maps at `strides`; images are [N, 3, H, W] with H, W multiples of 32."""

    strides: tuple[int, ...]

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes

    def forward(self, feats: dict[int, Tensor]) -> dict[str, Tensor]:
        """Raw outputs (logits), what loss() takes."""
        raise NotImplementedError

    def predict(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """Activated outputs, in the space of encode()'s targets, what decode() takes."""
        raise NotImplementedError

    def encode(self, boxes: list[Tensor], labels: list[Tensor], image_hw: tuple[int, int]) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss(self, raw: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def decode(self, pred: dict[str, Tensor], image_hw: tuple[int, int], score_thresh: float = 0.05,
               nms_iou: float | None = 0.5, max_dets: int = 100) -> list[Detections]:
        raise NotImplementedError

    def checked(self, boxes: list[Tensor], labels: list[Tensor], image_hw: tuple[int, int]):
        """Per image validated (boxes, labels): clipped to the image, zero-size dropped (see check_targets)."""
        h, w = image_hw
        if h % 32 or w % 32:
            raise ValueError(f"image sides must be multiples of 32 (the coarsest stride), got {h}x{w}")
        return [check_targets(b, lab, image_hw, self.n_classes) for b, lab in zip(boxes, labels, strict=True)]
