import math
import os

import pytest
import torch

from impls import cache
from impls.samplers.learned import LearnedConfig, TimeMLP, digit_labels, digits, digits_count, learned_model, train
from impls.samplers.nflow import FlowConfig, RealNVP, trained_flow
from impls.samplers.nflow import train as train_flow
from impls.samplers.schedules import SCHEDULES
from tests.optional import needs


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path / "cache"))


def test_cache_builds_once_then_loads():
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(3.0), "loss": 0.5}

    first = cache.load_or_build("t", {"a": 1}, build)
    again = cache.load_or_build("t", {"a": 1}, build)
    other = cache.load_or_build("t", {"a": 2}, build)
    assert len(calls) == 2 and torch.equal(again["w"], first["w"]) and again["loss"] == 0.5 and other["loss"] == 0.5


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_key"])
def test_cache_rebuilds_a_bad_entry(damage):
    key = {"a": 1}
    cache.load_or_build("t", key, lambda: {"v": 1})
    path = cache.entry("t", key)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:20])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        torch.save({"key": {"a": 99}, "payload": {"v": 1}}, path)
    assert cache.load_or_build("t", key, lambda: {"v": 2}) == {"v": 2}
    assert cache.load_or_build("t", key, lambda: {"v": 3}) == {"v": 2}  # the rebuilt entry is stored


def test_cache_that_cannot_be_written_warns_and_still_returns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TECHBENCH_CACHE", str(blocker))  # a file where the cache folder should be
    with pytest.warns(UserWarning, match="could not cache"):
        assert cache.load_or_build("t", {"a": 1}, lambda: {"v": 1}) == {"v": 1}
    assert blocker.read_text() == "x" and not list(tmp_path.glob("**/*.tmp"))


@needs("sklearn")
def test_digits_split_is_disjoint_and_scaled():
    train_x, test_x = digits("train"), digits("test")
    assert train_x.shape[1] == test_x.shape[1] == 64 and len(train_x) + len(test_x) == 1797
    assert (len(train_x), len(test_x)) == (digits_count("train"), digits_count("test"))  # what grids plan with
    assert train_x.min() >= -1 and train_x.max() <= 1
    # no held-out image is a training image (the bundled set has no exact duplicates across this split)
    assert not (torch.cdist(test_x, train_x).min(dim=1).values == 0).any()
    assert set(digit_labels("test").tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        digits("val")


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_training_lowers_the_loss_and_is_deterministic(family):
    config = LearnedConfig(family=family, steps=150, hidden=64, layers=2)
    model, losses = train(config)
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:20]) / 20
    again = learned_model(config)  # trains through the cache: the same seed gives the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model.parameterization == ("eps" if family == "vp" else "velocity")
    assert type(model.schedule) is (SCHEDULES["rectified_flow"] if family == "flow" else SCHEDULES["vp_linear"])


def test_time_mlp_takes_a_batch_of_times_or_one():
    model = TimeMLP(3, SCHEDULES["ddpm"](), "eps", hidden=16, layers=1)
    x = torch.randn(5, 3)
    per_row = model(x, torch.full((5,), 0.3, dtype=torch.float64))
    assert per_row.shape == (5, 3) and torch.allclose(model(x, torch.tensor([0.3])), per_row)


def test_bad_configs_are_refused():
    with pytest.raises(AssertionError, match="data"):
        LearnedConfig(data="cifar")
    with pytest.raises(AssertionError, match="family"):
        LearnedConfig(family="ve")
    with pytest.raises(AssertionError, match="data"):
        FlowConfig(data="imagenet")


def test_realnvp_log_prob_is_the_change_of_variables():
    # log p(x) = log N(f^-1(x)) + log |det d f^-1 / dx|, with the Jacobian from autograd on a random (trained-like)
    # flow: perturb the zero-initialised output layers so the couplings are not the identity.
    torch.manual_seed(0)
    flow = RealNVP(2, couplings=4, hidden=16)
    for p in flow.parameters():
        p.data += 0.3 * torch.randn_like(p)
    x = torch.randn(6, 2, dtype=torch.float32)

    def inverse(v):
        for layer in reversed(flow.layers):
            v, _ = layer.inverse(v)
        return v

    for xi, lp in zip(x, flow.log_prob(x)):
        jac = torch.autograd.functional.jacobian(lambda v: inverse(v[None])[0], xi)
        z = inverse(xi[None])[0]
        expected = -0.5 * (z**2).sum() - math.log(2 * math.pi) + torch.linalg.slogdet(jac).logabsdet
        assert lp.item() == pytest.approx(expected.item(), abs=1e-4)
    z = torch.randn(5, 2)
    y = z
    for layer in flow.layers:
        y = layer(y)
    assert torch.allclose(inverse(y), z, atol=1e-5)


def test_flow_training_lowers_nll_and_caches():
    config = FlowConfig(steps=150, hidden=32, couplings=4)
    flow, losses = train_flow(config)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.3
    cached = trained_flow(config)
    assert all(torch.equal(a, b) for a, b in zip(flow.state_dict().values(), cached.state_dict().values()))
    assert os.listdir(cache.cache_dir() / "samplers-nflow")
    assert flow.sample(7, torch.Generator().manual_seed(0)).shape == (7, 2)
