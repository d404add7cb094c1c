"""YOLOv1 grid head (Redmon et al. 2016): S x S cells, B boxes and one class distribution per cell, sum-squared loss.

Convolutional rather than fully connected, so it runs at any pyramid scale. Stride 16 gives an 8x8 grid at 128 px,
a cell 1/8 of the image, close to the paper's 1/7 (7x7 at 448 px, 64 px cells).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.detection.boxes import paired_iou
from impls.detection.head import Detections, Head, postprocess, tower

LAMBDA_COORD = 5.0  # the paper's weights: box terms up, the many empty cells' confidence down
LAMBDA_NOOBJ = 0.5


class YoloHead(Head):
    """Per cell: B x (x, y, sqrt w, sqrt h, confidence) and C class probabilities. x, y are the centre's offset in
    the cell in [0, 1); sqrt w, sqrt h are relative to the image (sqrt: an error costs small boxes more).

    The cell of a centre (cx, cy) in pixels is (row, col) = (floor(cy / s), floor(cx / s)) and its offset
    (cx / s - col, cy / s - row), measured from the cell's top-left corner; decode maps back cx = (col + x) W / Gw.
    x, y, sqrt w, sqrt h and the confidence are sigmoids, the classes a softmax over C (no background class).

    decode inverts encode exactly (up to float rounding) when at most one object centre falls in each cell: the
    paper's limit. Several in one cell keep the smallest (boxes are written largest first), the others are lost.
    """

    def __init__(self, n_classes: int, channels: int, stride: int = 16, boxes_per_cell: int = 2):
        super().__init__(n_classes)
        self.strides, self.b = (stride,), boxes_per_cell
        self.tower = tower(channels)
        self.out = nn.Conv2d(channels, boxes_per_cell * 5 + n_classes, 1)

    def forward(self, feats: dict[int, Tensor]) -> dict[str, Tensor]:
        return {"out": self.out(self.tower(feats[self.strides[0]]))}  # [N, B*5 + C, G, G]

    def predict(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        out = raw["out"].permute(0, 2, 3, 1)  # [N, Gh, Gw, B*5 + C]
        n, gh, gw, _ = out.shape
        boxes = out[..., : self.b * 5].reshape(n, gh, gw, self.b, 5).sigmoid()
        return {"box": boxes[..., :4], "conf": boxes[..., 4], "cls": out[..., self.b * 5:].softmax(-1)}

    def encode(self, boxes: list[Tensor], labels: list[Tensor], image_hw: tuple[int, int]) -> dict[str, Tensor]:
        """Targets: box [N, Gh, Gw, B, 4] (the object in every slot), conf [N, Gh, Gw, B] (1 in slot 0 of an object's
        cell), cls [N, Gh, Gw, C] one-hot, obj [N, Gh, Gw] bool."""
        h, w = image_hw
        s = self.strides[0]
        gh, gw, n = h // s, w // s, len(boxes)
        box = torch.zeros(n, gh, gw, self.b, 4)
        conf = torch.zeros(n, gh, gw, self.b)
        cls = torch.zeros(n, gh, gw, self.n_classes)
        obj = torch.zeros(n, gh, gw, dtype=torch.bool)
        for i, (b, lab) in enumerate(self.checked(boxes, labels, image_hw)):
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            for k in torch.argsort(area, descending=True, stable=True).tolist():
                x1, y1, x2, y2 = b[k].tolist()
                cx, cy = (x1 + x2) / 2 / s, (y1 + y2) / 2 / s  # centre in cell units; < G since x2 <= W
                col, row = int(cx), int(cy)
                box[i, row, col] = torch.tensor([cx - col, cy - row, ((x2 - x1) / w) ** 0.5, ((y2 - y1) / h) ** 0.5])
                conf[i, row, col] = 0
                conf[i, row, col, 0] = 1
                cls[i, row, col] = F.one_hot(lab[k], self.n_classes).float()
                obj[i, row, col] = True
        return {"box": box, "conf": conf, "cls": cls, "obj": obj}

    def _xyxy(self, box: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """[..., Gh, Gw, B, 4] cell-relative boxes to xyxy pixels."""
        h, w = image_hw
        gh, gw = box.shape[-4:-2]
        col = torch.arange(gw, device=box.device, dtype=box.dtype)[None, :, None]
        row = torch.arange(gh, device=box.device, dtype=box.dtype)[:, None, None]
        cx, cy = (col + box[..., 0]) * (w / gw), (row + box[..., 1]) * (h / gh)
        bw, bh = box[..., 2] ** 2 * w, box[..., 3] ** 2 * h
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)

    def loss(self, raw: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        pred = self.predict(raw)
        t = {k: v.to(raw["out"].device) for k, v in targets.items()}
        obj = t["obj"]  # [N, Gh, Gw]
        # The responsible predictor of an object's cell: the slot whose box has the highest IoU with it (not a
        # gradient path). Its confidence target is 1, as in most reimplementations (the paper uses that IoU).
        hw = (1.0, 1.0)  # IoU is scale-free, so unit image sides will do
        ious = paired_iou(self._xyxy(pred["box"].detach(), hw), self._xyxy(t["box"], hw))  # [N, Gh, Gw, B]
        resp = F.one_hot(ious.argmax(-1), self.b).bool() & obj[..., None]
        coord = ((pred["box"] - t["box"]) ** 2).sum(-1)[resp].sum()
        conf_obj = ((pred["conf"] - 1) ** 2)[resp].sum()
        conf_noobj = (pred["conf"] ** 2)[~resp].sum()
        cls = ((pred["cls"] - t["cls"]) ** 2).sum(-1)[obj].sum()
        return (LAMBDA_COORD * coord + conf_obj + LAMBDA_NOOBJ * conf_noobj + cls) / obj.shape[0]  # summed over
        # cells and slots, averaged over images

    def decode(self, pred: dict[str, Tensor], image_hw: tuple[int, int], score_thresh: float = 0.05,
               nms_iou: float | None = 0.5, max_dets: int = 100) -> list[Detections]:
        """Score of a slot: confidence x its cell's top class probability, one label per slot. The paper forms all C
        class-specific scores (confidence x each class's probability) per slot; only the top one is kept here."""
        boxes = self._xyxy(pred["box"], image_hw)  # [N, Gh, Gw, B, 4]
        prob, label = pred["cls"].max(-1)  # [N, Gh, Gw]
        scores = pred["conf"] * prob[..., None]  # [N, Gh, Gw, B]
        labels = label[..., None].expand_as(scores)
        return [postprocess(b.reshape(-1, 4), sc.reshape(-1), lab.reshape(-1), score_thresh, nms_iou, max_dets)
                for b, sc, lab in zip(boxes, scores, labels)]
