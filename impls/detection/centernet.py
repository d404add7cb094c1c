"""CenterNet head (Zhou et al. 2019, "Objects as Points"): a class heatmap of object centres at stride 4, plus the
box size and the centre's sub-cell offset read at each peak; peaks are 3x3 local maxima, no NMS."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.detection.head import Detections, Head, postprocess, tower

SIZE_WEIGHT = 0.1  # the paper's lambda_size: sizes are L1 in pixels, ~10x the offset's scale
ALPHA, BETA = 2, 4  # penalty-reduced focal loss (CornerNet's): alpha focuses on hard pixels, beta eases near centres
PRIOR = 0.1  # heatmap bias init -log((1 - p) / p) = -2.19, the paper's, so early focal losses do not explode
MIN_OVERLAP = 0.7  # CornerNet's Gaussian radius: a box shifted within it keeps IoU >= 0.7 with the object


def gaussian_radius(h: float, w: float, min_overlap: float = MIN_OVERLAP) -> float:
    """CornerNet's radius (the smallest of its three corner-shift cases), in the units of h and w. Each root is
    (b + sqrt(b^2 - 4ac)) / 2, not the quadratic formula's / (2a): CornerNet's released code (and CenterNet's, which
    copies it) divides by 2 whatever a is, and the trained models of both use that radius, so it is kept."""
    r = []
    for a, b, c in ((1, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)),
                    (4, 2 * (h + w), (1 - min_overlap) * w * h),
                    (4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h)):
        r.append((b + math.sqrt(b * b - 4 * a * c)) / 2)
    return min(r)


def draw_gaussian(heat: Tensor, cx: int, cy: int, radius: int) -> None:
    """Max a Gaussian of sigma (2r + 1) / 6 into heat [H, W] at (cx, cy); exactly 1 at the centre."""
    sigma = (2 * radius + 1) / 6
    h, w = heat.shape
    x0, x1, y0, y1 = max(0, cx - radius), min(w, cx + radius + 1), max(0, cy - radius), min(h, cy + radius + 1)
    ys = torch.arange(y0, y1, dtype=heat.dtype)[:, None] - cy
    xs = torch.arange(x0, x1, dtype=heat.dtype)[None, :] - cx
    g = torch.exp(-(xs**2 + ys**2) / (2 * sigma**2))
    heat[y0:y1, x0:x1] = torch.maximum(heat[y0:y1, x0:x1], g)


class CenterNetHead(Head):
    """heat [N, C, h, w] in (0, 1), size [N, 2, h, w] (box w, h in pixels), offset [N, 2, h, w] in [0, 1).

    An object's peak is the cell (int(cy / s), int(cx / s)) of its centre in stride units, its offset target
    (cx / s - col, cy / s - row) and its Gaussian radius gaussian_radius(h / s, w / s) truncated to an int, as
    CenterNet's ctdet sample code, with two differences: that code takes ceil(h), ceil(w) before the radius, and
    regresses sizes in stride units; here sizes are in input pixels (the paper's "raw pixel coordinates").

    decode inverts encode exactly (up to float rounding) when no two objects, of any class, share a stride-4 cell
    and there are at most max_dets objects: the heatmap is per class, but size and offset are one class-agnostic map
    each, as CenterNet's, so a later object's size and offset overwrite an earlier one's in a shared cell.
    """

    def __init__(self, n_classes: int, channels: int, stride: int = 4):
        super().__init__(n_classes)
        self.strides = (stride,)
        self.tower = tower(channels)
        self.heat = nn.Conv2d(channels, n_classes, 1)
        self.size = nn.Conv2d(channels, 2, 1)
        self.offset = nn.Conv2d(channels, 2, 1)
        nn.init.constant_(self.heat.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, feats: dict[int, Tensor]) -> dict[str, Tensor]:
        x = self.tower(feats[self.strides[0]])
        return {"heat": self.heat(x), "size": self.size(x), "offset": self.offset(x)}

    def predict(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        # Sizes as exp(.) x stride: positive, starting at one cell (4 px), 8 e-folds reach far beyond any image.
        s = self.strides[0]
        return {"heat": raw["heat"].sigmoid(), "size": raw["size"].clamp(max=8).exp() * s,
                "offset": raw["offset"].sigmoid()}

    def encode(self, boxes: list[Tensor], labels: list[Tensor], image_hw: tuple[int, int]) -> dict[str, Tensor]:
        """Targets as predict()'s, plus mask [N, h, w] bool: the cells holding an object centre."""
        s = self.strides[0]
        h, w, n = image_hw[0] // s, image_hw[1] // s, len(boxes)
        heat, size, offset = torch.zeros(n, self.n_classes, h, w), torch.zeros(n, 2, h, w), torch.zeros(n, 2, h, w)
        mask = torch.zeros(n, h, w, dtype=torch.bool)
        for i, (b, lab) in enumerate(self.checked(boxes, labels, image_hw)):
            for (x1, y1, x2, y2), c in zip(b.tolist(), lab.tolist()):
                cx, cy = (x1 + x2) / 2 / s, (y1 + y2) / 2 / s
                col, row = int(cx), int(cy)
                r = max(0, int(gaussian_radius((y2 - y1) / s, (x2 - x1) / s)))
                draw_gaussian(heat[i, c], col, row, r)
                size[i, :, row, col] = torch.tensor([x2 - x1, y2 - y1])
                offset[i, :, row, col] = torch.tensor([cx - col, cy - row])
                mask[i, row, col] = True
        return {"heat": heat, "size": size, "offset": offset, "mask": mask}

    def loss(self, raw: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """The paper's L_k + lambda_size L_size + L_off (its eqs. 1-3), each over N, the count of object centre cells
        in the batch, with the size and offset L1 summed over both coordinates. CenterNet's released code differs in
        two normalisations, kept out here: its focal term divides by its heatmap peaks (two objects of different
        classes in one stride-4 cell are two peaks there, one cell here), and its RegL1Loss by the mask expanded
        over both coordinates (2N), which halves its size and offset terms against the equations'."""
        pred = self.predict(raw)
        t = {k: v.to(raw["heat"].device) for k, v in targets.items()}
        p = pred["heat"].clamp(1e-4, 1 - 1e-4)  # as the paper's code: log(0) guards
        peak = t["heat"] == 1
        pos = -((1 - p) ** ALPHA * p.log())[peak].sum()
        neg = -((1 - t["heat"]) ** BETA * p**ALPHA * (1 - p).log())[~peak].sum()
        n_obj = max(1, int(t["mask"].sum()))
        m = t["mask"][:, None].expand_as(t["size"])
        size = F.l1_loss(pred["size"][m], t["size"][m], reduction="sum")
        off = F.l1_loss(pred["offset"][m], t["offset"][m], reduction="sum")
        return (pos + neg + SIZE_WEIGHT * size + off) / n_obj

    def decode(self, pred: dict[str, Tensor], image_hw: tuple[int, int], score_thresh: float = 0.05,
               nms_iou: float | None = None, max_dets: int = 100) -> list[Detections]:
        heat = pred["heat"]
        n, c, h, w = heat.shape
        s = image_hw[1] / w
        peaks = heat * (heat == F.max_pool2d(heat, 3, 1, 1))  # non-peaks to 0
        scores, idx = peaks.reshape(n, -1).topk(min(max_dets, c * h * w), dim=-1)  # [N, K]
        labels, cell = idx // (h * w), idx % (h * w)
        row, col = (cell // w).to(heat.dtype), (cell % w).to(heat.dtype)
        size = pred["size"].reshape(n, 2, -1).gather(2, cell[:, None].expand(n, 2, -1))  # [N, 2, K]
        off = pred["offset"].reshape(n, 2, -1).gather(2, cell[:, None].expand(n, 2, -1))
        cx, cy = (col + off[:, 0]) * s, (row + off[:, 1]) * s
        boxes = torch.stack([cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2], -1)
        return [postprocess(b, sc, lab, score_thresh, nms_iou, max_dets) for b, sc, lab in zip(boxes, scores, labels)]
