"""Detection: synthetic data, COCO evaluation, heads' encode/decode, NMS, pyramid inference and its FLOPs, training
and its cache, and bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from impls.detection.boxes import batched_nms, box_iou, check_targets, nms, nms_torch, paired_iou
from impls.detection.data import DataConfig, make_dataset, size_bucket, size_thresholds, to_coco
from impls.detection.detector import HEADS, Detector
from impls.detection.evaluate import as_detections, evaluate, shifted
from impls.detection.head import Detections
from impls.detection.pyramid import (
    geometric_scales,
    in_range,
    merge,
    pyramid_detect,
    resize,
    scaled_side,
    snip_ranges,
)
from impls.detection.train import PRESETS, load_or_train, preset, train
from tests.optional import needs

CFG = DataConfig(image_size=128)


@pytest.fixture(scope="module")
def data():
    return make_dataset(CFG, 48, "test", seed=0)


def brute_iou(a, b):
    """IoU of two xyxy boxes given as lists of floats."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / u if u > 0 else 0.0


def brute_nms(boxes, scores, thr):
    """Greedy NMS in plain Python floats: the textbook loop."""
    b, s = boxes.tolist(), scores.tolist()
    keep = []
    for i in sorted(range(len(b)), key=lambda i: -s[i]):
        if all(brute_iou(b[i], b[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def random_boxes(n, size=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 4 + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


def same_set(det: Detections, boxes, labels, atol=1e-4):
    """The detections are exactly the given boxes and labels, in any order."""
    assert len(det.boxes) == len(boxes), f"{len(det.boxes)} detections for {len(boxes)} objects"
    key = lambda b, lab: sorted(zip(lab.tolist(), b.tolist()))  # noqa: E731
    for (la, ba), (lb, bb) in zip(key(det.boxes, det.labels), key(boxes, labels)):
        assert la == lb
        torch.testing.assert_close(torch.tensor(ba), torch.tensor(bb), atol=atol, rtol=0)




def test_dataset_is_deterministic_and_splits_differ():
    a, b = make_dataset(CFG, 4, "train", 0), make_dataset(CFG, 4, "train", 0)
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(x, y) for x, y in zip(a.boxes + a.labels, b.boxes + b.labels))
    assert torch.equal(make_dataset(CFG, 2, "train", 0).images, a.images[:2])  # image i does not depend on n
    test = make_dataset(CFG, 4, "test", 0)
    other_seed = make_dataset(CFG, 4, "train", 1)
    for x in a.images:
        assert all(not torch.equal(x, y) for y in torch.cat([test.images, other_seed.images]))


@pytest.mark.parametrize("occlusion", [False, True])
def test_boxes_valid_tiny_objects_and_buckets(data, occlusion):
    d = data if not occlusion else make_dataset(dataclasses.replace(CFG, occlusion=True), 48, "test")
    boxes, labels = torch.cat(d.boxes), torch.cat(d.labels)
    s = CFG.image_size
    assert d.images.shape == (48, 3, s, s) and 0 <= d.images.min() and d.images.max() <= 1
    assert (boxes >= 0).all() and (boxes <= s).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
    assert 0 <= labels.min() and labels.max() < CFG.n_classes and len(labels.unique()) == CFG.n_classes
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    assert (side < 8).float().mean() > 0.15  # measured 37% at 128 px (data.py's __main__)
    counts = torch.bincount(size_bucket(boxes, s), minlength=3)
    assert (counts >= 0.15 * len(boxes)).all(), counts  # measured 29/39/32%
    if not occlusion:  # no two boxes of an image intersect
        for b in d.boxes:
            iou = box_iou(b, b) - torch.eye(len(b))
            assert (iou <= 0).all()


def test_size_thresholds_scale_with_the_image():
    assert size_thresholds(640) == (32**2, 96**2)
    small, medium = size_thresholds(128)
    assert math.isclose(small, 6.4**2) and math.isclose(medium, 19.2**2)


def test_to_coco(data):
    coco = to_coco(data.boxes[:3], data.labels[:3], 128, 4)
    n = sum(len(b) for b in data.boxes[:3])
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == n and len(coco["categories"]) == 4
    ann = coco["annotations"][0]
    x, y, w, h = ann["bbox"]
    assert ann["id"] >= 1 and ann["iscrowd"] == 0 and math.isclose(ann["area"], w * h)




@needs("pycocotools")
def test_ground_truth_scores_one_shifted_boxes_zero(data):
    perfect = evaluate(data.boxes, data.labels, as_detections(data.boxes, data.labels), 128, 4)
    assert perfect == {k: 1.0 for k in perfect}
    far = evaluate(data.boxes, data.labels, shifted(as_detections(data.boxes, data.labels), 10_000.0), 128, 4)
    assert far == {k: 0.0 for k in far}


@needs("pycocotools")
def test_empty_predictions_give_zero(data):
    none = [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))] * len(data.boxes)
    assert all(v == 0.0 for v in evaluate(data.boxes, data.labels, none, 128, 4).values())
    with pytest.raises(ValueError, match="each of the"):
        evaluate(data.boxes, data.labels, none[:2], 128, 4)




def unique_cells(boxes, labels, stride, per_class):
    """Keep the first box of each centre cell (per class when per_class): the heads' one-object-per-cell condition."""
    seen, keep = set(), []
    for k, ((x1, y1, x2, y2), c) in enumerate(zip(boxes.tolist(), labels.tolist())):
        cell = (int((x1 + x2) / 2 / stride), int((y1 + y2) / 2 / stride), c if per_class else None)
        keep.append(cell not in seen)
        seen.add(cell)
    keep = torch.tensor(keep, dtype=torch.bool)
    return boxes[keep], labels[keep]


@pytest.mark.parametrize("head, stride, per_class", [("yolo", 16, False), ("centernet", 4, True)])
def test_grid_heads_decode_inverts_encode(data, head, stride, per_class):
    h = Detector(head, "none", width=8).head
    kept = [unique_cells(b, lab, stride, per_class) for b, lab in zip(data.boxes, data.labels)]
    boxes, labels = [b for b, _ in kept], [lab for _, lab in kept]
    assert sum(map(len, boxes)) > 0.6 * sum(map(len, data.boxes))
    for det, b, lab in zip(h.decode(h.encode(boxes, labels, (128, 128)), (128, 128)), boxes, labels):
        same_set(det, b, lab)
        assert (det.scores == 1).all()


def test_yolo_keeps_the_smallest_object_of_a_cell():
    h = Detector("yolo", "none", width=8).head
    boxes = torch.tensor([[1.0, 1.0, 15.0, 15.0], [5.0, 5.0, 11.0, 11.0]])  # both centres in cell (0, 0)
    det = h.decode(h.encode([boxes], [torch.tensor([0, 1])], (64, 64)), (64, 64))[0]
    assert len(det.boxes) == 1
    same_set(det, boxes[1:], torch.tensor([1]))


def test_fcos_decode_inverts_encode(data):
    h = Detector("fcos", "none", width=8).head
    targets = h.encode(data.boxes, data.labels, (128, 128))
    n_found = 0
    for det, b, lab in zip(h.decode(targets, (128, 128), score_thresh=0.0, max_dets=1000), data.boxes, data.labels):
        # Every decoded box is exactly a ground-truth box of its label, each at most once.
        iou = box_iou(det.boxes, b)
        best, k = iou.max(1) if len(b) else (torch.zeros(0), torch.zeros(0, dtype=torch.int64))
        assert (best > 1 - 1e-5).all() and len(k.unique()) == len(k) and torch.equal(lab[k], det.labels)
        torch.testing.assert_close(det.boxes, b[k], atol=1e-4, rtol=0)
        n_found += len(det.boxes)
    # The rest hold no location inside (under ~4 px, between stride-4 locations): measured 713 of 721 found.
    assert n_found >= 0.95 * sum(map(len, data.boxes))
    big = [b[(b[:, 2:] - b[:, :2]).min(1).values > 8] for b in data.boxes]
    labels = [lab[(b[:, 2:] - b[:, :2]).min(1).values > 8] for b, lab in zip(data.boxes, data.labels)]
    for det, b, lab in zip(h.decode(h.encode(big, labels, (128, 128)), (128, 128), max_dets=1000), big, labels):
        same_set(det, b, lab)  # all objects over 8 px, no overlaps (occlusion off): every one comes back




@pytest.mark.parametrize("n, thr", [(0, 0.5), (1, 0.5), (300, 0.5), (300, 0.3), (123, 0.7)])
def test_nms_matches_brute_force(n, thr):
    boxes, scores = random_boxes(n, seed=n)
    assert nms_torch(boxes, scores, thr).tolist() == brute_nms(boxes, scores, thr)
    assert nms(boxes, scores, thr).tolist() == brute_nms(boxes, scores, thr)  # torchvision's when importable


def test_nms_torch_matches_torchvision():
    ops = pytest.importorskip("torchvision.ops", reason="torchvision is optional")
    boxes, scores = random_boxes(500, seed=1)
    assert torch.equal(nms_torch(boxes, scores, 0.5), ops.nms(boxes, scores, 0.5))
    torch.testing.assert_close(box_iou(boxes, boxes), ops.box_iou(boxes, boxes))


def test_box_iou_and_classwise_nms():
    boxes, _ = random_boxes(40, seed=2)
    ref = torch.tensor([[brute_iou(a, b) for b in boxes.tolist()] for a in boxes.tolist()])
    torch.testing.assert_close(box_iou(boxes, boxes), ref)
    torch.testing.assert_close(paired_iou(boxes, boxes.flip(0)), ref.flip(1).diagonal())
    same = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    assert batched_nms(same, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(same, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), 0.5).tolist() == [0]




def dets(boxes, scores, labels):
    return Detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), torch.tensor(labels))


def test_merge_keeps_single_scale_boxes_and_removes_duplicates():
    at_1 = dets([[10, 10, 30, 30], [50, 50, 60, 60]], [0.9, 0.4], [0, 1])
    at_2 = dets([[11, 10, 31, 30], [80, 80, 120, 120], [10, 10, 30, 30]], [0.95, 0.7, 0.3], [0, 2, 3])
    out = merge([at_1, at_2], nms_iou=0.5)
    # the box at both scales kept once with its best score; the one only at scale 1 and the one only at scale 2
    # stay; an equal box of another class is not a duplicate.
    same_set(out, torch.tensor([[11, 10, 31, 30], [50, 50, 60, 60], [80, 80, 120, 120], [10, 10, 30, 30.0]]),
             torch.tensor([0, 1, 2, 3]))
    assert out.scores.tolist() == pytest.approx([0.95, 0.7, 0.4, 0.3])


def test_pyramid_maps_boxes_back_and_snip_filters():
    calls = []

    def detect_one(x):  # finds one object of 8 px in the original image, and a 40 px one, at whatever scale
        s = x.shape[-1] / 64
        calls.append(x.shape[-1])
        return [dets([[8 * s, 8 * s, 16 * s, 16 * s], [20 * s, 20 * s, 60 * s, 60 * s]], [0.9, 0.8], [0, 0])]

    images = torch.zeros(1, 3, 64, 64)
    out = pyramid_detect(detect_one, images, (1.0, 2.0, 0.5))[0]
    assert calls == [64, 128, 32]
    same_set(out, torch.tensor([[8, 8, 16, 16], [20, 20, 60, 60.0]]), torch.tensor([0, 0]))
    assert len(in_range(out, 12, 48).boxes) == 1


def test_snip_keeps_each_object_from_the_scales_that_see_it_in_band():
    def detect_one(x):  # finds an 8 px object, and a 40 px one, at whatever scale; both scored by the scale
        s = x.shape[-1] / 64
        return [dets([[8 * s, 8 * s, 16 * s, 16 * s], [20 * s, 20 * s, 60 * s, 60 * s]], [s / 4, s / 4], [0, 1])]

    images = torch.zeros(1, 3, 64, 64)
    # band 12-48 px: scale 2 answers for sizes up to 24 px (the 8 px object, 16 px there), scale 1 for 12-48 px
    # (the 40 px one), scale 0.5 for 24 px and up (the 40 px one again, 20 px there)
    assert snip_ranges((2.0, 1.0, 0.5), (12, 48)) == [(0.0, 24.0), (12.0, 48.0), (24.0, math.inf)]
    out = pyramid_detect(detect_one, images, (2.0, 1.0, 0.5), band=(12, 48))[0]
    found = sorted(zip(out.boxes.tolist(), out.scores.tolist()))
    # each object once, with the score of its best in-band scale: 2 for the small one, 1 for the large one
    assert found == [([8, 8, 16, 16], 0.5), ([20, 20, 60, 60], 0.25)]
    # one scale is both the finest and the coarsest: it answers for every size
    assert snip_ranges((1.0,), (12, 48)) == [(0.0, math.inf)]
    with pytest.raises(ValueError, match="no scale"):
        snip_ranges((4.0, 1.0), (12, 24))  # 24 / 4 = 6 px < 12 px: sizes 6-12 px belong to no scale
    with pytest.raises(ValueError, match="band"):
        snip_ranges((1.0, 2.0), (10, 5))


def test_resize_rounds_to_multiples_of_32():
    assert [scaled_side(128, s) for s in (1.0, 0.7, 0.5, 0.1, 1.5)] == [128, 96, 64, 32, 192]
    x, (sy, sx) = resize(torch.rand(2, 3, 128, 96), 0.7)
    assert x.shape == (2, 3, 96, 64) and (sy, sx) == (96 / 128, 64 / 96)
    with pytest.raises(ValueError, match="positive"):
        scaled_side(128, 0.0)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("head, neck", [("yolo", "spp"), ("centernet", "fpn"), ("fcos", "none")])
def test_pyramid_flops_are_the_sum_over_scales(head, neck):
    torch.manual_seed(0)
    model = Detector(head, neck, width=8).eval()
    images = torch.rand(1, 3, 256, 256)
    scales = geometric_scales(0.5, 4)  # sides 256, 128, 64, 32
    pyramid = count_flops(lambda: model.detect(images, "pyramid", scales))
    passes = [count_flops(lambda s=s: model.detect(resize(images, s)[0])) for s in scales]
    assert pyramid == sum(passes)
    # Conv FLOPs are proportional to pixels when every map divides evenly: exactly sum(side^2) / 256^2 ...
    assert pyramid / passes[0] == pytest.approx(sum(scaled_side(256, s) ** 2 for s in scales) / 256**2, rel=1e-12)
    # ... which for this ideal pyramid of ratio 0.5 is 1.328, within 0.4% of the infinite series 1 / (1 - r^2).
    assert pyramid / passes[0] == pytest.approx(1 / (1 - 0.5**2), rel=0.01)




@pytest.mark.parametrize("head", HEADS)
def test_short_training_lowers_the_loss(head):
    cfg = preset("smoke", head=head, steps=60, n_train=32)
    model, losses = train(cfg)
    # last 5 steps over first 5: measured 0.62 (yolo), 0.66 (centernet), 0.63 (fcos); per-batch noise is ~10%
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    out = model.detect(make_dataset(cfg.data(), 2, "test").images, "snip", (1.0, 2.0))
    assert len(out) == 2 and all(d.boxes.shape[1] == 4 and len(d.boxes) == len(d.scores) for d in out)


def test_cache_reuses_weights_and_retrains_a_corrupt_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    cfg = preset("smoke", head="yolo", steps=3, n_train=8)
    first = load_or_train(cfg)
    assert first.path.parent == tmp_path / "detection" and first.path.stem == cfg.key() and first.path.exists()
    again = load_or_train(cfg)
    assert not first.cached and again.cached and again.losses == first.losses
    for a, b in zip(first.detector.state_dict().values(), again.detector.state_dict().values()):
        assert torch.equal(a, b)
    first.path.write_bytes(b"not a checkpoint")
    redo = load_or_train(cfg)
    assert not redo.cached and redo.losses == first.losses  # same seed, same run
    assert load_or_train(cfg).cached
    assert preset("smoke", head="fcos").key() != cfg.key()
    assert preset("smoke", head="yolo", steps=3, n_train=8).key() == cfg.key()


def test_an_unwritable_cache_costs_a_retrain_not_the_result(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("TECHBENCH_CACHE", str(blocked))
    cfg = preset("smoke", head="centernet", steps=2, n_train=8)
    with pytest.warns(UserWarning, match="could not cache"):
        first = load_or_train(cfg)
    with pytest.warns(UserWarning, match="could not cache"):
        again = load_or_train(cfg)
    assert not first.cached and not again.cached and again.losses == first.losses


def test_presets_and_config_checks():
    assert set(PRESETS) == {"smoke", "quick", "full"}
    with pytest.raises(ValueError, match="unknown head"):
        preset("smoke", head="rcnn")
    with pytest.raises(ValueError, match="multiple of 32"):
        preset("smoke", resolution=100)
    with pytest.raises(ValueError, match="valid: smoke"):
        preset("huge")




@pytest.mark.parametrize("head", HEADS)
def test_images_without_objects(head):
    model = Detector(head, "fpn", width=8)
    images = torch.rand(2, 3, 64, 64)
    boxes, labels = [torch.zeros(0, 4), torch.tensor([[4.0, 4, 30, 30]])], [torch.zeros(0), torch.tensor([1])]
    loss = model.loss(images, boxes, labels)
    loss.backward()
    assert torch.isfinite(loss)
    empty = model.head.encode([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], (64, 64))
    assert all(len(d.boxes) == 0 for d in model.head.decode(empty, (64, 64)))
    assert torch.isfinite(model.loss(images[:1], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)]))


def test_bad_boxes():
    lab = torch.tensor([0, 1, 2])
    clipped, kept = check_targets(torch.tensor([[-5.0, 2, 10, 70], [70, 70, 90, 90], [3, 3, 3, 9]]), lab, (64, 64), 4)
    # partly outside: clipped; wholly outside and zero-width: dropped
    assert clipped.tolist() == [[0, 2, 10, 64]] and kept.tolist() == [0]
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        check_targets(torch.tensor([[-5.0, 2, 10, 20]]), lab[:1], (64, 64), 4, outside="reject")
    with pytest.raises(ValueError, match="inverted"):
        check_targets(torch.tensor([[10.0, 2, 5, 20]]), lab[:1], (64, 64), 4)
    with pytest.raises(ValueError, match="inf or NaN"):
        check_targets(torch.tensor([[math.nan, 2, 5, 20]]), lab[:1], (64, 64), 4)
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        check_targets(torch.tensor([[1.0, 2, 5, 20]]), torch.tensor([4]), (64, 64), 4)
    with pytest.raises(ValueError, match=r"boxes \[K, 4\]"):
        check_targets(torch.tensor([[1.0, 2, 5]]), lab[:1], (64, 64), 4)
    model = Detector("centernet", "none", width=8)
    with pytest.raises(ValueError, match="multiples of 32"):
        model.head.encode([torch.zeros(0, 4)], [torch.zeros(0)], (60, 64))
    with pytest.raises(ValueError, match="unknown mode"):
        model.detect(torch.rand(1, 3, 64, 64), "tiled")
    with pytest.raises(ValueError, match=r"images \[N, 3, H, W\]"):
        model.detect(torch.rand(3, 64, 64))
