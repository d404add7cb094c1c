"""Detection: scale coverage for latency. A shared backbone, necks (none, FPN, SPP, torchvision's FPN), heads
(YOLOv1 grid, CenterNet, FCOS), and inference at one scale (the reference), on an image pyramid, or SNIP-style
scale-aware, on a synthetic dataset with tiny objects, scored by COCO AP per size bucket.

    cfg = preset("quick", head="fcos", neck="fpn")
    model = load_or_train(cfg).detector            # trained once, then from $TECHBENCH_CACHE
    test = make_dataset(cfg.data(), 200, "test")
    dets = model.detect(test.images, "pyramid", (1.0, 2.0, 0.5))
    metrics = evaluate(test.boxes, test.labels, dets, cfg.resolution, cfg.n_classes)  # impls.detection.evaluate

The package exports no name equal to a submodule's (evaluate, train): import those from their modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from impls import lazy_exports

if TYPE_CHECKING:
    from impls.detection.data import DataConfig, DetectionData
    from impls.detection.detector import Detector
    from impls.detection.head import Detections
    from impls.detection.train import TrainConfig, Trained

__all__ = ["HEADS", "MODES", "NECKS", "PRESETS", "DataConfig", "DetectionData", "Detections", "Detector",
           "TrainConfig", "Trained", "evaluate_detector", "load_or_train", "make_dataset", "preset"]


def _load() -> dict:
    from impls.detection import backbone, data, detector, evaluate, head, train

    return dict(
        HEADS=detector.HEADS, MODES=detector.MODES, NECKS=backbone.NECKS, PRESETS=train.PRESETS,
        DataConfig=data.DataConfig, DetectionData=data.DetectionData, Detections=head.Detections,
        Detector=detector.Detector, TrainConfig=train.TrainConfig, Trained=train.Trained,
        evaluate_detector=evaluate.evaluate_detector, load_or_train=train.load_or_train, make_dataset=data.make_dataset,
        preset=train.preset,
    )


__getattr__ = lazy_exports(globals(), _load)
