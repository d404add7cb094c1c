"""Image-pyramid inference: run the detector on resized copies, map boxes back, merge across scales with class-wise
NMS; optionally SNIP-style scale-aware filtering (Singh & Davis 2018): each scale keeps only the boxes whose size,
at that scale, lies in the band of sizes the detector sees well, so a scale answers only for the objects it sees well
(upsampled copies for the small ones, the base image for the rest) and its out-of-band guesses never reach the merge.

Costs add: a pyramid's FLOPs are the sum of its single passes, ~1 / (1 - r^2) of one pass for a geometric pyramid
of ratio r (the tests count them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from impls.detection.head import Detections, postprocess

MULTIPLE = 32  # resized sides round to the coarsest stride, so every level's map is whole


def scaled_side(side: int, scale: float, multiple: int = MULTIPLE) -> int:
    """The side of a scaled image: side x scale rounded to the nearest multiple, at least one multiple."""
    if scale <= 0:
        raise ValueError(f"scales must be positive, got {scale}")
    return max(multiple, round(side * scale / multiple) * multiple)


def resize(images: Tensor, scale: float, multiple: int = MULTIPLE) -> tuple[Tensor, tuple[float, float]]:
    """Images [N, 3, H, W] resized by ~scale (sides rounded, see scaled_side), and the exact (sy, sx) applied.
    Bilinear, antialiased when shrinking (no aliasing of the clutter into fake edges)."""
    h, w = images.shape[-2:]
    nh, nw = scaled_side(h, scale, multiple), scaled_side(w, scale, multiple)
    if (nh, nw) == (h, w):
        return images, (1.0, 1.0)
    out = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h or nw < w)
    return out, (nh / h, nw / w)


def unscale(det: Detections, sy: float, sx: float) -> Detections:
    """Boxes of a resized image back in the original image's pixels: x / sx, y / sy. Exact for resize's
    align_corners=False, which maps continuous coordinate x to x * sx (pixel centres i + 0.5 included)."""
    return det._replace(boxes=det.boxes / det.boxes.new_tensor([sx, sy, sx, sy]))


def in_range(det: Detections, lo: float, hi: float) -> Detections:
    """The detections whose size sqrt(w h), in the pixels of the image they were found in, lies in [lo, hi]."""
    wh = (det.boxes[:, 2:] - det.boxes[:, :2]).clamp(min=0)
    size = (wh[:, 0] * wh[:, 1]).sqrt()
    keep = (size >= lo) & (size <= hi)
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep])


def snip_ranges(scales: Sequence[float], band: tuple[float, float]) -> list[tuple[float, float]]:
    """Per scale, the object sizes sqrt(w h) in original pixels that the scale answers for: those that appear inside
    `band` (lo, hi), in the resized image's pixels, at that scale. The finest scale also takes every size below its
    range and the coarsest every size above (SNIP's extreme resolutions are open-ended: [0, 80] px at 1400 px,
    [120, inf) at 480), so each size has a scale; a band too narrow for the gap between two scales is an error."""
    lo, hi = band
    if not 0 <= lo < hi:
        raise ValueError(f"need a band 0 <= lo < hi, got {band}")
    finest, coarsest = max(scales), min(scales)
    ranges = [(0.0 if s == finest else lo / s, math.inf if s == coarsest else hi / s) for s in scales]
    ordered = sorted(scales, reverse=True)
    for fine, coarse in zip(ordered, ordered[1:]):
        if hi / fine < lo / coarse:
            raise ValueError(f"band {band} leaves sizes {hi / fine:.3g}-{lo / coarse:.3g} px to no scale between "
                             f"scales {fine} and {coarse}: widen it to hi / lo >= {fine / coarse:.3g}")
    return ranges


def merge(per_scale: Sequence[Detections], nms_iou: float = 0.5, max_dets: int = 100) -> Detections:
    """One image's detections from several scales (already in its pixels) as one set: class-wise NMS over all of
    them, so a box found at one scale stays and one found at several is kept once, with its best score."""
    boxes = torch.cat([d.boxes for d in per_scale])
    scores = torch.cat([d.scores for d in per_scale])
    labels = torch.cat([d.labels for d in per_scale])
    return postprocess(boxes, scores, labels, -math.inf, nms_iou, max_dets)


def pyramid_detect(detect_one: Callable[[Tensor], list[Detections]], images: Tensor, scales: Sequence[float],
                   nms_iou: float = 0.5, max_dets: int = 100,
                   band: tuple[float, float] | None = None) -> list[Detections]:
    """detect_one at each scale, boxes mapped back, merged per image. band (lo, hi), object sizes in pixels of the
    resized image, turns on SNIP filtering: each scale keeps the boxes in its snip_ranges(scales, band)."""
    if not scales:
        raise ValueError("need at least one scale")
    ranges = snip_ranges(scales, band) if band is not None else [(0.0, math.inf)] * len(scales)
    found: list[list[Detections]] = [[] for _ in range(images.shape[0])]
    for scale, (lo, hi) in zip(scales, ranges):
        resized, (sy, sx) = resize(images, scale)
        for i, det in enumerate(detect_one(resized)):
            found[i].append(in_range(unscale(det, sy, sx), lo, hi))
    return [merge(dets, nms_iou, max_dets) for dets in found]


def geometric_scales(ratio: float, n: int) -> tuple[float, ...]:
    """(1, r, r^2, ..., r^(n-1)): an ideal pyramid, whose pixel count tends to 1 / (1 - r^2) of the base image."""
    return tuple(ratio**k for k in range(n))


if __name__ == "__main__":
    from torch.utils.flop_counter import FlopCounterMode

    from impls.detection.detector import Detector

    model = Detector("fcos", "fpn").eval()
    images = torch.rand(1, 3, 256, 256)
    for scales in [(1.0,), geometric_scales(0.5, 4), geometric_scales(2**-0.5, 4), (1.0, 2.0)]:
        with FlopCounterMode(display=False) as counter:
            model.detect(images, "pyramid", scales)
        sides = [scaled_side(256, s) for s in scales]
        print(f"scales {', '.join(f'{s:.3f}' for s in scales)} (sides {sides}): {counter.get_total_flops() / 1e9:.3f} "
              f"GFLOP, {sum(s * s for s in sides) / 256**2:.3f}x one pass")
