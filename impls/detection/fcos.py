"""FCOS head (Tian et al. 2019): anchor-free, per location of every level a class score, the distances (l, t, r, b)
to the box's sides and a centerness that down-weights locations far from the centre. One tower shared by levels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.detection.boxes import paired_iou
from impls.detection.head import Detections, Head, postprocess, tower

STRIDES = (4, 8, 16, 32)
# An object is regressed at the level whose range (BOUND * stride / 2, BOUND * stride] holds its centre's largest
# distance max(w, h) / 2 (the finest level from 0, the coarsest without limit), by the locations of that level inside
# it. FCOS bounds 8x stride (P3 <= 64 px) for 800 px images with objects up to ~800 px; ours span 2-64 px at 128 px,
# and 2x stride spreads them over the four levels instead. FCOS applies the range per location; at 2x stride that
# left 32 of 721 test objects (200 images at 128 px; e.g. 21x28 px) with no location in range at any level, so here
# the range picks the object's level, and an object with no location inside it there falls back to the finest level
# that has one: 8 of 721 left, all under ~4 px, between the stride-4 locations.
BOUND = 2
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # RetinaNet's, as FCOS
PRIOR = 0.01  # class bias init -log(99): RetinaNet's, so the ~10^3 background locations do not swamp the first steps


def points(image_hw: tuple[int, int], strides=STRIDES, device=None) -> tuple[Tensor, Tensor, list[int]]:
    """Location centres [L, 2] (x, y) of all levels, in pixels (stride / 2 + stride * index), their strides [L],
    and the count per level."""
    pts, st, counts = [], [], []
    for s in strides:
        h, w = image_hw[0] // s, image_hw[1] // s
        y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        pts.append(torch.stack([x.reshape(-1), y.reshape(-1)], -1).float() * s + s / 2)
        st.append(torch.full((h * w,), float(s), device=device))
        counts.append(h * w)
    return torch.cat(pts), torch.cat(st), counts


class FcosHead(Head):
    """Flattened over levels: cls [N, L, C] sigmoid probabilities, reg [N, L, 4] (l, t, r, b) in pixels, ctr [N, L].

    Locations (points()) are the cell centres (stride / 2 + stride * index; FCOS's stride // 2, the same for even
    strides), levels concatenated finest first, each row-major. reg at a location (px, py) is (px - x1, py - y1,
    x2 - px, y2 - py), positive only strictly inside the box; decode gives (px - l, py - t, px + r, py + b). Raw
    reg is log distance (exp(.) * stride with no learned per-level scale, where FCOS uses exp(s_l x)). Centerness
    is FCOS's sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)).

    decode inverts encode exactly (up to float rounding, duplicates removed by NMS) when every object holds a
    location strictly inside it (sides over 4 px suffice: stride 4 is the finest) that no smaller object of its level
    also holds (a location inside several regresses the smallest, FCOS's rule): true when objects do not overlap.
    """

    def __init__(self, n_classes: int, channels: int, strides: tuple[int, ...] = STRIDES):
        super().__init__(n_classes)
        self.strides = strides
        self.cls_tower, self.reg_tower = tower(channels), tower(channels)
        self.cls = nn.Conv2d(channels, n_classes, 3, padding=1)
        self.reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctr = nn.Conv2d(channels, 1, 3, padding=1)  # on the regression branch, as FCOS's later versions
        nn.init.constant_(self.cls.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, feats: dict[int, Tensor]) -> dict[str, Tensor]:
        flat = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  [N, C, h, w] -> [N, h*w, C]
        cls, reg, ctr = [], [], []
        for s in self.strides:
            c, r = self.cls_tower(feats[s]), self.reg_tower(feats[s])
            cls.append(flat(self.cls(c)))
            # exp(.) x stride: positive distances, one stride at zero; clamped at 8 e-folds against overflow
            reg.append(flat(self.reg(r)).clamp(max=8) + math.log(s))
            ctr.append(flat(self.ctr(r)))
        return {"cls": torch.cat(cls, 1), "reg": torch.cat(reg, 1), "ctr": torch.cat(ctr, 1)[..., 0]}

    def predict(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"cls": raw["cls"].sigmoid(), "reg": raw["reg"].exp(), "ctr": raw["ctr"].sigmoid()}

    def encode(self, boxes: list[Tensor], labels: list[Tensor], image_hw: tuple[int, int]) -> dict[str, Tensor]:
        """Targets as predict()'s, plus pos [N, L] bool; negatives hold zeros."""
        pts, st, _ = points(image_hw, self.strides)
        bounds = torch.tensor([BOUND * s for s in self.strides[:-1]])  # upper bounds of all but the coarsest level
        strides = torch.tensor(self.strides, dtype=torch.float32)
        n, n_pts = len(boxes), pts.shape[0]
        cls, reg = torch.zeros(n, n_pts, self.n_classes), torch.zeros(n, n_pts, 4)
        ctr, pos = torch.zeros(n, n_pts), torch.zeros(n, n_pts, dtype=torch.bool)
        for i, (b, lab) in enumerate(self.checked(boxes, labels, image_hw)):
            if len(b) == 0:
                continue
            ltrb = torch.cat([pts[:, None] - b[None, :, :2], b[None, :, 2:] - pts[:, None]], -1)  # [L, K, 4]
            inside = ltrb.min(-1).values > 0  # [L, K]
            half = (b[:, 2:] - b[:, :2]).max(-1).values / 2  # [K]
            level = strides[torch.searchsorted(bounds, half)]  # [K]: the first level whose bound is >= half
            ok = inside & (st[:, None] == level[None])
            finest = torch.where(inside, st[:, None], math.inf).min(0).values  # [K]
            ok |= inside & (st[:, None] == finest[None]) & ~ok.any(0, keepdim=True)
            area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None].expand(n_pts, -1)
            best_area, k = torch.where(ok, area, math.inf).min(-1)  # ambiguous: the smallest object
            pos[i] = torch.isfinite(best_area)
            t = ltrb[torch.arange(n_pts), k]  # [L, 4]
            reg[i] = torch.where(pos[i, :, None], t, 0)
            lr, tb = t[:, [0, 2]], t[:, [1, 3]]
            c = (lr.min(-1).values / lr.max(-1).values * tb.min(-1).values / tb.max(-1).values).clamp(min=0).sqrt()
            ctr[i] = torch.where(pos[i], c, 0)
            cls[i] = F.one_hot(lab[k], self.n_classes).float() * pos[i, :, None]
        return {"cls": cls, "reg": reg, "ctr": ctr, "pos": pos}

    def loss(self, raw: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """Sigmoid focal loss (alpha 0.25, gamma 2) over every location and class, + (1 - GIoU) of the positives'
        boxes (the paper's IoU loss, as its released code's GIoU option), + centerness BCE on the positives; each
        summed and divided by max(1, positives). The box loss is not weighted by centerness."""
        t = {k: v.to(raw["cls"].device) for k, v in targets.items()}
        pos = t["pos"]
        n_pos = max(1, int(pos.sum()))
        p = raw["cls"].sigmoid()
        ce = F.binary_cross_entropy_with_logits(raw["cls"], t["cls"], reduction="none")
        p_t = p * t["cls"] + (1 - p) * (1 - t["cls"])
        a_t = FOCAL_ALPHA * t["cls"] + (1 - FOCAL_ALPHA) * (1 - t["cls"])
        cls = (a_t * (1 - p_t) ** FOCAL_GAMMA * ce).sum() / n_pos
        if not pos.any():
            return cls + 0 * raw["reg"].sum() + 0 * raw["ctr"].sum()  # keep every output in the graph
        # GIoU of the boxes around a common origin: only the distances matter.
        d, dt = raw["reg"][pos].exp(), t["reg"][pos]
        giou = paired_iou(torch.cat([-d[:, :2], d[:, 2:]], -1), torch.cat([-dt[:, :2], dt[:, 2:]], -1), True)
        reg = (1 - giou).sum() / n_pos
        ctr = F.binary_cross_entropy_with_logits(raw["ctr"][pos], t["ctr"][pos], reduction="sum") / n_pos
        return cls + reg + ctr

    def decode(self, pred: dict[str, Tensor], image_hw: tuple[int, int], score_thresh: float = 0.05,
               nms_iou: float | None = 0.6, max_dets: int = 100) -> list[Detections]:
        """Score sqrt(class probability x centerness) (FCOS's released code); NMS at 0.6, as FCOS. Two departures
        from that code: each location keeps only its most probable class (FCOS keeps every (location, class) with
        p > 0.05), and the score threshold and pre-NMS top 1000 apply to that score over all levels at once (FCOS
        thresholds p before centerness, and takes its top 1000 per level)."""
        pts = points(image_hw, self.strides, pred["cls"].device)[0]
        out = []
        for cls, reg, ctr in zip(pred["cls"], pred["reg"], pred["ctr"]):
            prob, label = cls.max(-1)  # [L]
            score = (prob * ctr).sqrt()
            top = score.topk(min(1000, score.numel())).indices  # FCOS's pre-NMS top-1000
            b = torch.cat([pts[top] - reg[top, :2], pts[top] + reg[top, 2:]], -1)
            out.append(postprocess(b, score[top], label[top], score_thresh, nms_iou, max_dets))
        return out
