"""A deterministic synthetic detection dataset: shapes of several classes and log-uniform sizes on cluttered, noisy
backgrounds, with COCO-style size buckets scaled to the image, so scale coverage can be measured without downloads.

Size buckets (the rule): COCO calls an object small below 32^2 px^2 of area and large above 96^2 on images of about
640 px, so at an image side S the thresholds are (32 S / 640)^2 and (96 S / 640)^2: at S = 128, 6.4^2 and 19.2^2.
Area here is box area (w * h), which is also what the evaluator ranges over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

SHAPES = ("square", "disk", "ring", "triangle", "cross")  # class id = index; colour is random, so shape is the cue
SPLITS = ("train", "test")  # each split its own seed stream: np SeedSequence([seed, split, image])
COCO_SIDE = 640  # the image side COCO's 32 / 96 px thresholds refer to
SUPERSAMPLE = 4  # 4x4 samples per pixel: a 2 px object still leaves soft, visible pixels
MIN_PX = 2.0  # no box side below 2 px: under that an object is a blur of one pixel whatever the supersampling
MIN_VISIBLE = 0.3  # with occlusion on, an object less than 30% visible is dropped from the labels


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 128
    """Side of the square images in px (the base resolution)."""
    n_classes: int = 4
    """Classes, the first n of SHAPES."""
    max_objects: int = 6
    """Objects per image are drawn uniformly from 1..max_objects (fewer when they do not fit without overlap)."""
    min_side: float = 0.025
    """Smallest object side as a fraction of the image (3.2 px at 128 px, clamped to MIN_PX): the tiny objects."""
    max_side: float = 0.5
    """Largest object side as a fraction of the image. Sides are log-uniform between the two (large ones fail to fit
    more often): measured at 128 px over 200 images, 37% of objects under 8 px, small / medium / large 29/39/32%."""
    occlusion: bool = False
    """False: boxes never intersect. True: objects overlap freely, later ones drawn on top; boxes stay amodal."""
    clutter: int = 12
    """Distractor strokes and blotches per image (not objects of any class)."""
    noise: float = 0.04
    """Std of the per-pixel Gaussian noise on [0, 1] intensities."""

    def __post_init__(self):
        if not 1 <= self.n_classes <= len(SHAPES):
            raise ValueError(f"n_classes must be in 1..{len(SHAPES)}, got {self.n_classes}")
        if self.image_size < 16 or self.max_objects < 1:
            raise ValueError(f"need image_size >= 16 and max_objects >= 1, got {self.image_size}, {self.max_objects}")
        if not 0 < self.min_side <= self.max_side <= 1:
            raise ValueError(f"need 0 < min_side <= max_side <= 1, got {self.min_side}, {self.max_side}")


@dataclass(frozen=True)
class DetectionData:
    images: Tensor
    """[N, 3, S, S] float32 in [0, 1]."""
    boxes: list[Tensor] = field(repr=False)
    """Per image [K, 4] float32 xyxy in pixels, inside the image, positive size (K may be 0)."""
    labels: list[Tensor] = field(repr=False)
    """Per image [K] int64 class ids in 0..n_classes-1."""
    config: DataConfig = DataConfig()


def size_thresholds(image_size: int) -> tuple[float, float]:
    """(small, medium) area thresholds in px^2: COCO's 32^2 and 96^2 scaled linearly in side to the image."""
    k = image_size / COCO_SIDE
    return (32 * k) ** 2, (96 * k) ** 2


def size_bucket(boxes: Tensor, image_size: int) -> Tensor:
    """[K] int64: 0 small, 1 medium, 2 large by box area, half-open: small < t0 <= medium < t1 <= large.

    pycocotools' areaRng are closed, [lo, hi] (COCOeval.evaluateImg ignores a box with area < lo or > hi), so an area
    exactly at t0 or t1 counts in both buckets beside it there; here it goes to the larger one."""
    small, medium = size_thresholds(image_size)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (area >= small).long() + (area >= medium).long()


def _mask(shape: str, u: np.ndarray, v: np.ndarray, w: float, h: float) -> np.ndarray:
    """Coverage of a shape on box coordinates u, v in [0, 1] (v down); every shape touches all four box edges."""
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "square":
        return inside
    if shape == "disk":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "ring":  # an outlined square, border 15% of the shorter side and at least 1 px
        t = max(1.0, 0.15 * min(w, h))
        return inside & ~((u > t / w) & (u < 1 - t / w) & (v > t / h) & (v < 1 - t / h))
    if shape == "triangle":  # apex at the top centre, base along the bottom edge
        return inside & (v >= np.abs(2 * u - 1))
    if shape == "cross":
        return inside & ((np.abs(u - 0.5) <= 0.17) | (np.abs(v - 0.5) <= 0.17))
    raise ValueError(f"unknown shape {shape!r} (valid: {', '.join(SHAPES)})")


def _alpha(shape: str, box: np.ndarray, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """The pixel window a box covers and the shape's fractional coverage there, [h, w] in [0, 1]."""
    x1, y1, x2, y2 = box
    c0, r0 = int(math.floor(x1)), int(math.floor(y1))
    c1, r1 = min(size, int(math.ceil(x2))), min(size, int(math.ceil(y2)))
    offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    xs = (np.arange(c0, c1)[:, None] + offs).ravel()  # sample x positions, [w * SUPERSAMPLE]
    ys = (np.arange(r0, r1)[:, None] + offs).ravel()
    u = (xs[None, :] - x1) / (x2 - x1)
    v = (ys[:, None] - y1) / (y2 - y1)
    m = _mask(shape, u, v, x2 - x1, y2 - y1).astype(np.float32)
    m = m.reshape(r1 - r0, SUPERSAMPLE, c1 - c0, SUPERSAMPLE).mean(axis=(1, 3))
    return (slice(r0, r1), slice(c0, c1)), m


def _background(rng: np.random.Generator, cfg: DataConfig) -> np.ndarray:
    """[S, S, 3]: a random colour with a linear gradient, then faint strokes and blotches as clutter."""
    s = cfg.image_size
    yy, xx = np.mgrid[0:s, 0:s] / s
    gx, gy = rng.uniform(-0.2, 0.2, 3), rng.uniform(-0.2, 0.2, 3)
    img = rng.uniform(0.2, 0.8, 3) + gx * xx[..., None] + gy * yy[..., None]
    for _ in range(cfg.clutter):
        colour, a = rng.uniform(0, 1, 3), rng.uniform(0.15, 0.4)
        if rng.random() < 0.5:  # a 1 px stroke: edges with no closed shape
            p, q = rng.uniform(0, s, 2), rng.uniform(0, s, 2)
            t = np.linspace(0, 1, 2 * s)
            r = np.clip((p[1] + t * (q[1] - p[1])).astype(int), 0, s - 1)
            c = np.clip((p[0] + t * (q[0] - p[0])).astype(int), 0, s - 1)
            img[r, c] = (1 - a) * img[r, c] + a * colour
        else:  # a soft Gaussian blotch
            cx, cy, sd = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.03, 0.15) * s
            g = a * np.exp(-((xx * s - cx) ** 2 + (yy * s - cy) ** 2) / (2 * sd**2))[..., None]
            img = (1 - g) * img + g * colour
    return img


def _place(rng: np.random.Generator, cfg: DataConfig, placed: list[np.ndarray]) -> np.ndarray | None:
    s = cfg.image_size
    lo, hi = max(MIN_PX, cfg.min_side * s), max(MIN_PX, cfg.max_side * s)
    for _ in range(50):
        side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = math.exp(rng.uniform(-math.log(1.5), math.log(1.5)))
        w, h = max(MIN_PX, side * math.sqrt(aspect)), max(MIN_PX, side / math.sqrt(aspect))
        w, h = min(w, s), min(h, s)
        x1, y1 = rng.uniform(0, s - w), rng.uniform(0, s - h)
        box = np.array([x1, y1, x1 + w, y1 + h])
        if cfg.occlusion or all(
            min(box[2], b[2]) <= max(box[0], b[0]) or min(box[3], b[3]) <= max(box[1], b[1]) for b in placed
        ):
            return box
    return None


def render(rng: np.random.Generator, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image [S, S, 3] float32, its boxes [K, 4] float32 xyxy and labels [K] int64."""
    img = _background(rng, cfg)
    boxes, labels, alphas = [], [], []
    for _ in range(rng.integers(1, cfg.max_objects + 1)):
        box = _place(rng, cfg, boxes)
        if box is None:
            continue
        label = int(rng.integers(cfg.n_classes))
        window, a = _alpha(SHAPES[label], box, cfg.image_size)
        colour = rng.uniform(0, 1, 3)
        while np.abs(colour - img[window].reshape(-1, 3).mean(0)).max() < 0.3:  # keep each object visible
            colour = rng.uniform(0, 1, 3)
        img[window] = (1 - a[..., None]) * img[window] + a[..., None] * colour
        boxes.append(box)
        labels.append(label)
        alphas.append((window, a))
    keep = np.ones(len(boxes), dtype=bool)
    if cfg.occlusion:  # visible share of each object under those drawn after it
        cover = np.zeros((cfg.image_size, cfg.image_size))
        for k in range(len(boxes) - 1, -1, -1):
            window, a = alphas[k]
            keep[k] = (a * (1 - cover[window])).sum() >= MIN_VISIBLE * a.sum()
            cover[window] = 1 - (1 - cover[window]) * (1 - a)
    img = np.clip(img + rng.normal(0, cfg.noise, img.shape), 0, 1).astype(np.float32)
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4)[keep]
    return img, b, np.array(labels, dtype=np.int64)[keep]


def make_dataset(cfg: DataConfig, n: int, split: str = "train", seed: int = 0) -> DetectionData:
    """n images of a split. Image i comes from SeedSequence([seed, split index, i]), so it does not depend on n, and
    train and test (different split index) are independent streams that never share an image."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})")
    images, boxes, labels = [], [], []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), i]))
        img, b, lab = render(rng, cfg)
        images.append(torch.from_numpy(img).permute(2, 0, 1))
        boxes.append(torch.from_numpy(b))
        labels.append(torch.from_numpy(lab))
    s = cfg.image_size
    stacked = torch.stack(images) if images else torch.zeros(0, 3, s, s)
    return DetectionData(stacked, boxes, labels, cfg)


def to_coco(boxes: list[Tensor], labels: list[Tensor], image_size: int, n_classes: int) -> dict:
    """Ground truth as a COCO json dict: images (ids from 1), annotations (xywh bbox, box area, iscrowd 0, ids from 1:
    COCOeval treats a matched id of 0 as no match), categories (id = class + 1)."""
    images = [{"id": i + 1, "width": image_size, "height": image_size} for i in range(len(boxes))]
    anns = []
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        for (x1, y1, x2, y2), c in zip(b.tolist(), lab.tolist()):
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": c + 1, "name": SHAPES[c] if c < len(SHAPES) else str(c)} for c in range(n_classes)]
    return {"images": images, "annotations": anns, "categories": cats}


if __name__ == "__main__":
    cfg = DataConfig()
    data = make_dataset(cfg, 200)
    allb = torch.cat(data.boxes)
    side = ((allb[:, 2] - allb[:, 0]) * (allb[:, 3] - allb[:, 1])).sqrt()
    counts = torch.bincount(size_bucket(allb, cfg.image_size), minlength=3)
    print(f"{allb.shape[0]} objects in 200 images of {cfg.image_size} px; {(side < 8).float().mean():.0%} under 8 px; "
          f"small/medium/large {counts.tolist()} (thresholds {size_thresholds(cfg.image_size)})")
