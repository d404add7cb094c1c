"""Detection: scale coverage for latency. How a detector sees objects of many sizes (one pass at one scale, an image
pyramid, SNIP-style scale-aware pyramid, an FPN or SPP neck), what each costs per image, and what it buys in COCO AP
per size bucket on a synthetic dataset with tiny objects (impls.detection.data). `torchvision_fpn` is torchvision's
FeaturePyramidNetwork, the FPN users pick, as the neck in place of ours (impls.detection.torchvision_fpn says where
its conventions differ); where torchvision does not import (not installed, or PyPI's CUDA build beside a CPU torch)
its cases are skipped with that reason in one line.

Variants are the ways of handling scale; `head` (YOLOv1 grid, CenterNet, FCOS) and `resolution` (the side the
detector is trained and tested at) are params. Each (head, neck, resolution) is trained once per machine in a small
seeded budget (the `train` preset of impls.detection.train, with `train_steps`) and cached (impls.cache; smoke and
quick weights ship with the package, impls/weights, so a first run trains nothing there); pyramid
and snip run the single-scale model's weights (no neck) at SCALES, so they cost no training of their own. AP is
measured on `n_test` images of the test split, a stream the training images never come from.

Latency is one image (batch 1), post-processing and NMS included; images_per_s is a batch of `batch` images;
image_flops are counted with FlopCounterMode on one image (convolutions and matmuls; the resizes and NMS count 0).
peak_mem_bytes is what one batch of `batch` images allocates beyond the weights.
"""

from __future__ import annotations

import torch

from bench.flops import flop_counter_mode
from bench.memory import peak_bytes
from bench.metrics import Metric, timing
from bench.suite import Measurement, Relative, Skip, Suite, register, requires
from bench.timing import time_fn
from bench.work import Work, rates
from impls.detection import torchvision_fpn
from impls.detection.backbone import NECKS
from impls.detection.boxes import torchvision_nms
from impls.detection.data import make_dataset
from impls.detection.evaluate import evaluate_detector
from impls.detection.train import PRESETS, load_or_train, preset

# Pyramid scales: 2x upsampling is what makes a 3 px object ~6 px, the smallest the stride-4 maps resolve well
# (quick, centernet, no neck: ap_small 0.020 at scale 1, 0.050 with (1, 2)); the 2x pass costs 4x the base pass.
SCALES = (1.0, 2.0)
MODES = {"single": "single", "pyramid": "pyramid", "snip": "snip", "fpn": "single", "spp": "single",
         "torchvision_fpn": "single"}
NECK = {"single": "none", "pyramid": "none", "snip": "none", "fpn": "fpn", "spp": "spp",
        "torchvision_fpn": "torchvision_fpn"}
TORCHVISION = torchvision_fpn.LIBRARY
# heads and resolutions compared per size; optimizer steps (the rest of training is the size's preset in
# impls.detection.train: batch, lr, training images, backbone width); test images; batch
# of the throughput and memory measurements. Quick's 720 steps are what it takes for AP to mean something: the
# no-neck CenterNet scores AP 0.021 after 240 steps and 0.182 after 720 (AP50 0.09 -> 0.43); a 128 px step takes
# ~60 ms on a 2-core CPU, so quick's three trainings cost ~2 min on an idle machine (11-16 min each on a loaded one);
# smoke's 64 px steps ~10 ms. Both sizes' models ship with the package (impls/weights): a first run trains none.
GRIDS = {
    "smoke": {"heads": ("centernet",), "resolutions": (64,), "steps": 60, "n_test": 16, "batch": 4},
    "quick": {"heads": ("centernet",), "resolutions": (128,), "steps": 720, "n_test": 100, "batch": 8},
    "full": {"heads": ("centernet", "yolo", "fcos"), "resolutions": (256, 512), "steps": 3000, "n_test": 1000,
             "batch": 32},
}


@register
class Detection(Suite):
    name = "detection"
    description = "scale coverage for latency: AP per object size against latency and FLOPs, per neck, head and mode"
    variants = {
        "single": "reference: no neck (1x1 laterals), one pass at the trained resolution",
        "pyramid": "image pyramid on the single model's weights: one pass per scale, merged by class-wise NMS",
        "snip": "pyramid where each scale keeps the boxes whose size there is in the detector's band (SNIP, Singh & "
                "Davis 2018): 2x answers for the small objects, 1x for the rest",
        "fpn": "FPN neck (Lin et al. 2017), one pass",
        "spp": "SPP neck (He et al. 2014; YOLOv3-SPP's 5/9/13 max-pools) on the stride-32 map, one pass",
        "torchvision_fpn": "torchvision.ops.FeaturePyramidNetwork as the neck (its defaults: 3x3 outputs with bias, no "
                           "norm, every level), one pass",
    }
    libraries = {"torchvision_fpn": TORCHVISION.label()}
    requires = {"torchvision_fpn": ("torchvision", TORCHVISION.pip)}
    not_plannable = ("its measured step is detection with post-processing: which boxes pass the score threshold and "
                     "NMS only the trained weights' scores on the test images decide, values the meta device lacks")
    relative = (
        Relative("time_overhead_x", "latency_ms"),
        Relative("flops_overhead_x", "image_flops"),
    )
    metrics = (
        *timing("latency", "detecting one image (batch 1), post-processing and NMS included"),
        *timing("batch_time", "detecting one batch of `batch` images"),
        *rates("batch_time", item="image", flops=True, what="a batch of `batch` images"),
        Metric("image_flops", "exact", "lower", "FLOPs of detecting one image (convolutions and matmuls)"),
        Metric("peak_mem_bytes", "exact", "lower", "bytes one batch allocates beyond the weights"),
        Metric("ap", "exact", "higher", "COCO AP@[.5:.95] on the test images"),
        Metric("ap50", "exact", "higher", "COCO AP at IoU 0.5"),
        Metric("ap_small", "exact", "higher", "COCO AP@[.5:.95] of small objects (image-scaled buckets)"),
        Metric("ap_medium", "exact", "higher", "COCO AP@[.5:.95] of medium objects"),
        Metric("ap_large", "exact", "higher", "COCO AP@[.5:.95] of large objects"),
        Metric("ar_small", "exact", "higher", "COCO AR@100 of small objects"),
        Metric("shipped_weights", "info", None, "the weights are the package's (impls/weights, fp16, trained "
               "elsewhere by the same seeded recipe), not trained on this machine; AP is measured here either way"),
        Metric("nms_torchvision", "info", None, "NMS ran torchvision.ops.nms (torchvision imports here), else a "
               "plain-torch host loop that keeps the same boxes more slowly: latency differs, AP does not"),
    )

    def grid(self, size, device):
        g = GRIDS[size]
        return [{"head": head, "resolution": res, "train": size, "width": PRESETS[size].width,
                 "train_steps": g["steps"], "n_test": g["n_test"], "batch": g["batch"]}
                for res in g["resolutions"] for head in g["heads"]]

    def measure(self, variant, params, device):
        requires("pycocotools")  # COCOeval's AP, before minutes of training
        if variant in self.requires:
            requires(self.requires[variant][0], pip=self.requires[variant][1])
        cfg = _config(variant, params)
        # installed is not enough: PyPI's torchvision, a CUDA build, does not import beside a CPU torch
        if (why := NECKS[cfg.neck].unavailable()) is not None:
            raise Skip(why)
        trained = load_or_train(cfg, device)
        model = trained.detector
        mode, scales = MODES[variant], SCALES if MODES[variant] != "single" else (1.0,)
        test = make_dataset(cfg.data(), params["n_test"], "test", cfg.seed)
        quality = evaluate_detector(model, test, mode, scales, batch=params["batch"])

        one = test.images[:1].to(device)
        batch = test.images[: params["batch"]].to(device)
        with torch.no_grad():
            latency = time_fn(lambda: model.detect(one, mode, scales), device, warmup=1, min_reps=5)
            throughput = time_fn(lambda: model.detect(batch, mode, scales), device, warmup=1, min_reps=3)
            with flop_counter_mode() as counter:
                model.detect(one, mode, scales)
            mem = peak_bytes(lambda: model.detect(batch, mode, scales), device)
        # fp32 weights; on CUDA the convolutions run on TF32 tensor cores (torch.backends.cudnn.allow_tf32 is on by
        # default), so that is the peak they are held against
        tf32 = device.startswith("cuda") and torch.backends.cudnn.allow_tf32
        work = Work("batch_time", items=len(batch), item="image", flops=counter.get_total_flops() * len(batch),
                    dtype="tf32" if tf32 else "float32")
        metrics = {"image_flops": counter.get_total_flops(), "peak_mem_bytes": mem, **quality,
                   "shipped_weights": trained.shipped, "nms_torchvision": torchvision_nms()}
        return Measurement(metrics, timed=throughput, timings={"latency": latency, "batch_time": throughput},
                           work=[work])


def _config(variant: str, params: dict):
    """The training config behind a case: the `train` preset with the case's head, neck, resolution and steps."""
    return preset(params["train"], head=params["head"], neck=NECK[variant], resolution=params["resolution"],
                  steps=params["train_steps"])
