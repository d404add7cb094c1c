"""COCO-style AP through pycocotools' COCOeval, in memory and silenced, with its small / medium / large area ranges
replaced by the image-scaled buckets of data.size_thresholds.

Conventions, as COCO's: boxes go in as xywh in pixels (x2 - x1, no +1), image and annotation ids from 1 (a matched id
of 0 reads as no match), category id = label + 1; a box's area for the buckets is the annotation's w * h (to_coco) and
loadRes's w * h for detections. The buckets are pycocotools' closed ranges [lo, hi] (an area exactly at a threshold
is in both buckets beside it); matching is per category, greedy by score, IoU >= threshold at 0.50:0.05:0.95."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from impls.detection.data import DetectionData, size_thresholds, to_coco
from impls.detection.head import Detections

# Indices into COCOeval.stats (its summarize() order): AP@[.5:.95], AP50, AP75, AP S/M/L, AR@1, AR@10, AR@100, AR S/M/L.
METRICS = {"ap": 0, "ap50": 1, "ap_small": 3, "ap_medium": 4, "ap_large": 5, "ar_small": 9}


def results_to_coco(dets: Sequence[Detections]) -> list[dict]:
    """Detections per image (image ids from 1, as to_coco) as COCO result dicts (xywh, category id = label + 1)."""
    out = []
    for i, d in enumerate(dets):
        for (x1, y1, x2, y2), s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()):
            out.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(s)})
    return out


def evaluate(gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], dets: Sequence[Detections], image_size: int,
             n_classes: int) -> dict[str, float]:
    """ap, ap50, ap_small, ap_medium, ap_large, ar_small in [0, 1] (COCO's definitions, at most 100 detections per
    image). No detections at all give 0. A bucket with no ground truth at all is undefined: NaN (COCOeval's -1)."""
    if len(dets) != len(gt_boxes):
        raise ValueError(f"need detections for each of the {len(gt_boxes)} images, got {len(dets)}")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = results_to_coco(dets)
    n_gt = sum(len(b) for b in gt_boxes)
    if not results or n_gt == 0:
        # loadRes fails on an empty list; with no ground truth COCOeval returns -1 everywhere.
        return {k: (0.0 if n_gt else math.nan) for k in METRICS}
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = to_coco(list(gt_boxes), list(gt_labels), image_size, n_classes)
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        small, medium = size_thresholds(image_size)
        ev.params.areaRng = [[0.0, 1e10], [0.0, small], [small, medium], [medium, 1e10]]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (math.nan if ev.stats[i] < 0 else float(ev.stats[i])) for k, i in METRICS.items()}


def evaluate_detector(model, data: DetectionData, mode: str = "single", scales: Sequence[float] = (1.0,),
                      batch: int = 32, score_thresh: float = 0.05) -> dict[str, float]:
    """Run model.detect on data in batches (on the model's device) and evaluate it."""
    device = next(model.parameters()).device
    dets: list[Detections] = []
    for i in range(0, data.images.shape[0], batch):
        out = model.detect(data.images[i: i + batch].to(device), mode, scales, score_thresh=score_thresh)
        dets += [Detections(*(t.cpu() for t in d)) for d in out]
    return evaluate(data.boxes, data.labels, dets, data.config.image_size, data.config.n_classes)


def shifted(dets: Sequence[Detections], dx: float) -> list[Detections]:
    """Every box moved dx pixels right: far enough and no box overlaps its object (a test of AP 0)."""
    return [d._replace(boxes=d.boxes + torch.tensor([dx, 0.0, dx, 0.0])) for d in dets]


def as_detections(boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> list[Detections]:
    """Ground truth as perfect detections, all scored 1."""
    return [Detections(b.float(), torch.ones(len(b)), lab.long()) for b, lab in zip(boxes, labels, strict=True)]
