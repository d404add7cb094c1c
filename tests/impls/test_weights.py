"""The trained models shipped in impls/weights: a first run at smoke and quick sizes finds every model it needs there
(so it trains nothing), each shipped model scores within its stated band (impls.weights.recipes.BANDS) of what
retraining gives, and a stale or mismatching shipped file is ignored, never trusted."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from impls import cache
from impls.weights import recipes
from impls.weights.build import REFERENCE, slim
from impls.weights.recipes import SIZES, artifacts, within

ARTIFACTS = {a.name: a for size in SIZES for a in artifacts(size)}
REF = json.loads(REFERENCE.read_text())["artifacts"]
TRAINERS = ("impls.detection.train.train", "impls.samplers.learned.train", "impls.samplers.nflow.train",
            "impls.moe.lm.train", "impls.mtp.train.train")
SHIPPED_BYTES_MAX = 5_000_000  # a few MB in all, so the package stays quick to install (4.7 MB now)


@pytest.fixture
def no_training(tmp_path, monkeypatch):
    """An empty user cache, the shipped files on, and every training loop failing the test if it starts."""
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TECHBENCH_SHIPPED", raising=False)
    for target in TRAINERS:
        monkeypatch.setattr(target, lambda *a, _t=target, **k: pytest.fail(f"{_t} ran: a shipped model is missing"))


def _training_points(size: str):
    """(suite name, variant, params) of every case that trains a model (or loads one), at `size` on a CPU, but for
    those whose model needs a library that does not import here (detection's torchvision_fpn)."""
    from bench.suite import discover
    from impls.detection.backbone import NECKS
    from suites.detection import _config

    suites = discover()
    for name in ("detection", "samplers", "moe", "mtp"):
        suite = suites[name]
        for params in suite.grid(size, "cpu"):
            for variant in suite.variants:
                if not suite.has_case(variant, params) or params.get("part", "balance") != "balance":
                    continue
                if name == "samplers" and params["model"] != "learned":
                    continue
                if name == "detection" and NECKS[_config(variant, params).neck].unavailable() is not None:
                    continue
                yield name, variant, params


def _load_as_the_suite_does(name: str, variant: str, params: dict) -> None:
    if name == "detection":
        from impls.detection.train import load_or_train
        from suites.detection import _config

        load_or_train(_config(variant, params))
    elif name == "samplers":
        from suites.samplers import NFLOW, SPECS, Samplers, _model, _sampler

        if variant == NFLOW:  # its config is built inside measure(); 2000 one-pass samples, a second or so
            Samplers().measure(variant, params, "cpu")
        else:
            _model(variant, SPECS[_sampler(variant)].family, params, "cpu")
    elif name == "moe":
        from suites.moe import _balance

        _balance(variant, params, "cpu")
    else:
        from impls.mtp.train import load_or_train
        from suites.mtp import config

        load_or_train(config(variant, params), "cpu", getattr(torch, params["dtype"]))


@pytest.mark.parametrize("size", SIZES)
def test_a_first_run_finds_every_model_it_trains_shipped(size, no_training, monkeypatch):
    found, read = set(), cache.read

    def spy(path, key):
        payload = read(path, key)
        if path.parent.parent == cache.SHIPPED and payload is not None:
            found.add((path.parent.name, path.name))
        return payload

    monkeypatch.setattr(cache, "read", spy)
    points = list(_training_points(size))
    for point in points:
        _load_as_the_suite_does(*point)
    # each point loaded without training (the trainers fail the test), and every model that ships for this size
    # served some point: what ships is exactly what the grid trains (where its library imports)
    declared = {(a.namespace, cache.shipped_entry(a.namespace, a.key).name) for a in artifacts(size)
                if a.unavailable() is None}
    assert len(points) > len(declared) and found == declared
    # nothing trained went to the user cache; the samplers' sampling-noise floor and their reference's quantiles and
    # MMD terms are computed there, not trained
    computed = {"samplers-floor", "samplers-ref", "samplers-mmd-ref"}
    assert {p.parent.name for p in cache.cache_dir().glob("*/*.pt")} <= computed


def test_shipped_files_hold_their_keys_fp16_weights_and_fit_the_budget():
    files = {p.relative_to(cache.SHIPPED).as_posix() for p in cache.SHIPPED.glob("*/*.pt")}
    assert files == {e["file"] for e in REF.values()}  # no file ships that reference.json does not describe
    assert set(REF) == set(ARTIFACTS)
    total = 0
    for name, a in ARTIFACTS.items():
        path = cache.shipped_entry(a.namespace, a.key)
        assert REF[name]["file"] == path.relative_to(cache.SHIPPED).as_posix(), name
        payload = cache.read(path, a.key)
        assert payload is not None, f"{name}: shipped file missing or not holding its key"
        if a.weights:
            floats = [v for v in payload[a.weights].values() if v.is_floating_point()]
            assert floats and all(v.dtype == torch.float16 for v in floats), name
        total += path.stat().st_size
    assert total <= SHIPPED_BYTES_MAX, total


def _shipped_quality(a) -> dict:
    if (why := a.unavailable()) is not None:  # torchvision's FPN where torchvision does not import
        pytest.skip(why)
    assert a.load() == "shipped"
    return a.quality()


@pytest.mark.parametrize("name", [n for n in ARTIFACTS if n.split("/")[1] == "quick"])
def test_quick_shipped_model_scores_within_its_band_of_the_recorded_retraining(name, no_training):
    # reference.json's "trained" figures are the fp32 model the build command trained from scratch
    if name.startswith("detection/"):
        pytest.importorskip("pycocotools")
    got, trained = _shipped_quality(ARTIFACTS[name]), REF[name]["trained"]
    assert set(got) == set(trained)
    for figure, value in got.items():
        assert within(figure, value, trained[figure]), (figure, value, trained[figure], recipes.BANDS[figure])


# every smoke model (a few seconds each), and one quick moe run: its shipped payload is the training run whose figures
# the records report, so reference.json's "trained" is that same run and a retrain here is the real check (~4 s)
RETRAINED = [n for n in ARTIFACTS if n.split("/")[1] == "smoke"] + ["moe/quick/aux_free"]


@pytest.mark.parametrize("name", RETRAINED)
def test_retraining_reproduces_the_shipped_model_within_its_band(name, tmp_path, monkeypatch):
    if name.startswith("detection/"):
        pytest.importorskip("pycocotools")
    a = ARTIFACTS[name]
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path / "cache"))
    shipped = _shipped_quality(a)
    monkeypatch.setenv("TECHBENCH_SHIPPED", "0")
    assert a.load() == "built"  # trained here, now, by the same code a suite runs
    retrained = a.quality()
    for figure, value in shipped.items():
        assert within(figure, value, retrained[figure]), (figure, value, retrained[figure], recipes.BANDS[figure])


@pytest.fixture
def fake_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TECHBENCH_SHIPPED", raising=False)
    return tmp_path / "shipped"


def test_a_shipped_file_is_used_before_the_cache_and_only_for_its_own_key(fake_shipped, monkeypatch):
    key = {"a": 1}
    cache.write(cache.shipped_entry("t", key), key, {"v": "shipped"})
    assert cache.fetch("t", key, lambda: {"v": "built"}) == ({"v": "shipped"}, "shipped")
    assert not cache.entry("t", key).exists()  # nothing copied into the user cache
    monkeypatch.setenv("TECHBENCH_SHIPPED", "0")  # ignore the shipped files: train on this machine
    assert cache.fetch("t", key, lambda: {"v": "built"}) == ({"v": "built"}, "built")
    assert cache.fetch("t", key, lambda: {"v": "again"}) == ({"v": "built"}, "cache")


@pytest.mark.parametrize("damage", ["other_key", "garbage"])
def test_a_stale_or_broken_shipped_file_is_ignored_and_the_model_retrained(fake_shipped, damage):
    key = {"a": 1}
    path = cache.shipped_entry("t", key)
    if damage == "other_key":  # a file under this key's name holding another key: never trusted
        cache.write(path, {"a": 2}, {"v": "stale"})
    else:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a checkpoint")
    assert cache.fetch("t", key, lambda: {"v": "built"}) == ({"v": "built"}, "built")


def test_a_build_where_a_library_does_not_import_keeps_what_ships_of_its_models(tmp_path, monkeypatch):
    # torchvision's FPN trains only where torchvision imports (torch 2.11's CUDA build), not on torch 2.13's CPU
    # build: a whole size rebuilt there says so and keeps its entry and file, rather than failing or dropping them
    from impls.weights import build as weights

    def fake(name: str, why: str | None) -> recipes.Artifact:
        key = {"name": name}

        def load() -> str:
            if why is not None:
                raise ImportError(why)
            return cache.fetch("t", key, lambda: {"v": 1.0})[1]

        return recipes.Artifact(f"t/smoke/{name}", "t", key, None, None, load, lambda: {}, lambda: why)

    ours, lib = fake("ours", None), fake("lib", "needs lib, which is not installed")
    out = tmp_path / "shipped"
    shipped = out / "t" / cache.entry("t", lib.key).name
    cache.write(shipped, lib.key, {"v": 2.0})
    entry = {"file": f"t/{shipped.name}", "train_s": 1.0}
    (out / REFERENCE.name).write_text(json.dumps({"format": 1, "artifacts": {lib.name: entry}}))
    monkeypatch.setattr(weights, "artifacts", lambda size: [ours, lib])
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path / "cache"))
    reference = weights.build(("smoke",), None, out)
    assert reference["artifacts"][lib.name] == entry and cache.read(shipped, lib.key) == {"v": 2.0}
    built = out / reference["artifacts"][ours.name]["file"]
    assert cache.read(built, ours.key) == {"v": 1.0}
    assert json.loads((out / REFERENCE.name).read_text()) == reference


def test_slim_stores_float_weights_in_fp16_and_keeps_the_rest():
    payload = {"state": {"w": torch.randn(3), "keep": torch.ones(2, dtype=torch.bool), "n": torch.tensor(4)},
               "losses": [1.0, 0.5], "curve": torch.tensor([2.0, 1.0])}
    out = slim(payload, "state")
    assert out["state"]["w"].dtype == torch.float16 and torch.equal(out["state"]["w"].float(), payload["state"]["w"]
                                                                     .half().float())
    assert out["state"]["keep"].dtype == torch.bool and out["state"]["n"].dtype == torch.int64
    assert out["losses"] == [1.0, 0.5] and out["curve"].dtype == torch.float32  # curves are figures: kept
    assert slim(payload, None) is payload


def test_training_loops_report_progress_every_2_percent_and_at_the_end(caplog, tmp_path, monkeypatch):
    from impls.moe.lm import LMConfig, train
    from impls.moe.router import ROUTERS

    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="techbench.progress"):
        train(LMConfig(dim=16, layers=1, n_routed=4, top_k=2, heads=2, seq=8, batch=2, vocab=64), ROUTERS["aux_free"],
              steps=120, eval_seqs=2)
    records = [r for r in caplog.records if r.name == "techbench.progress"]
    # 120 steps: one record each 2 steps (120 // 50), the last at 120
    assert [r.done for r in records] == list(range(2, 121, 2)) and {r.total for r in records} == {120}
    assert records[-1].getMessage() == "training moe aux_free 120/120"


def test_the_detection_loop_names_its_model_in_its_progress(caplog):
    from impls.detection.train import preset, train

    with caplog.at_level(logging.INFO, logger="techbench.progress"):
        train(preset("smoke", head="yolo", neck="spp", steps=3, n_train=8))
    assert [r.getMessage() for r in caplog.records] == [f"training yolo-spp {i}/3" for i in (1, 2, 3)]
    assert [(r.done, r.total) for r in caplog.records] == [(1, 3), (2, 3), (3, 3)]
