"""Box utilities: IoU, greedy NMS (torchvision.ops where it imports, else plain torch), class-wise NMS, and input
checks that turn bad ground truth into a clear ValueError or a documented clip."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

try:  # optional: the C++/CUDA kernels are faster, the results are the same (tests compare them when importable)
    from torchvision.ops import nms as _tv_nms
except Exception:  # noqa: BLE001  -- not installed (ImportError), or a build whose operators do not load beside this
    # torch: PyPI's torchvision is a CUDA build, and beside a CPU torch its import raises RuntimeError ("operator
    # torchvision::nms does not exist"); either way NMS runs nms_torch, and every suite still imports
    _tv_nms = None

Outside = Literal["clip", "reject"]


def box_area(boxes: Tensor) -> Tensor:
    """[K] areas of xyxy boxes [K, 4]; inverted boxes count as 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[N, M] IoU of xyxy boxes a [N, 4] and b [M, 4]; 0 where both are empty (no 0 / 0)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # [N, M]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(inter))


def paired_iou(a: Tensor, b: Tensor, generalized: bool = False) -> Tensor:
    """[...] IoU (or GIoU, Rezatofighi et al. 2019) of matching xyxy boxes a, b [..., 4]; 0 for two empty boxes."""
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a) + area(b) - inter
    iou = inter / union.clamp(min=1e-9)
    if not generalized:
        return iou
    hull = area(torch.cat([torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])], -1))
    return iou - (hull - union) / hull.clamp(min=1e-9)


def nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS in torch: [K] int64 indices kept, by decreasing score (stable for ties); a box is dropped when its
    IoU with a kept, higher-scored box is > iou_threshold (torchvision's rule)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()  # [K, K]
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):  # K vector ops, not K^2 Python steps: ~2 ms for 1,000 boxes
        if keep[i]:
            keep[i + 1:] &= ~over[i, i + 1:]
    return order[torch.from_numpy(keep).to(boxes.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision.ops.nms when importable, else nms_torch; both keep the same boxes for distinct scores."""
    if _tv_nms is not None:
        return _tv_nms(boxes.float(), scores.float(), iou_threshold)
    return nms_torch(boxes, scores, iou_threshold)


def torchvision_nms() -> bool:
    """Whether `nms` runs torchvision's kernel here (else nms_torch: a host loop, slower on a GPU). A record says
    which, since it moves latency, not the boxes kept."""
    return _tv_nms is not None


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS: boxes of different labels never suppress each other (each class shifted to its own region)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    shift = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + shift, scores, iou_threshold)


def check_targets(boxes: Tensor, labels: Tensor, image_hw: tuple[int, int], n_classes: int,
                  outside: Outside = "clip") -> tuple[Tensor, Tensor]:
    """Validated ground truth of one image: float32 boxes [K, 4] xyxy in pixels and int64 labels [K].

    Raises ValueError on a wrong shape, non-finite coordinates, inverted boxes (x2 < x1 or y2 < y1) or labels outside
    0..n_classes-1. Boxes reaching outside the image are clipped to it (outside="clip") or rejected ("reject").
    Zero-size boxes (after clipping, e.g. one lying wholly outside) are dropped: they have no centre or area to
    encode, and COCO ignores them too. An image with no boxes is valid and gives K = 0.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.int64, device=boxes.device)
    if boxes.numel() == 0 and labels.numel() == 0:
        boxes, labels = boxes.reshape(0, 4), labels.reshape(0)
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
        raise ValueError(f"need boxes [K, 4] and labels [K], got {tuple(boxes.shape)} and {tuple(labels.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError("boxes hold inf or NaN")
    if ((boxes[:, 2:] - boxes[:, :2]) < 0).any():
        raise ValueError(f"inverted boxes (need x1 <= x2 and y1 <= y2): {boxes[(boxes[:, 2:] < boxes[:, :2]).any(1)]}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got {labels.unique().tolist()}")
    h, w = image_hw
    limit = boxes.new_tensor([w, h, w, h])
    out = (boxes < 0).any(1) | (boxes > limit).any(1)
    if out.any():
        if outside == "reject":
            raise ValueError(f"boxes outside the {w}x{h} image: {boxes[out].tolist()}")
        if outside != "clip":
            raise ValueError(f"outside must be 'clip' or 'reject', got {outside!r}")
        boxes = torch.minimum(boxes.clamp(min=0), limit)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep]
