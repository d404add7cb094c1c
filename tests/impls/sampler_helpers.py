"""What the tests of the library samplers (torchdiffeq's, torchsde's) share: seeded generators, the starting noise of
an exact model, the RMS distance of two sample sets, a model that records the times it is called at, a stand-in
for the library's module, and the fixture that clears an adapter's cached api()."""

import importlib.util
import sys
import types

import pytest
import torch

from impls.samplers.base import prior_noise
from impls.samplers.params import ExactModel

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def x_T(model: ExactModel, n: int = 64, dtype=F64, seed: int = 0) -> torch.Tensor:
    return prior_noise(model.schedule, n, 2, gen(seed), dtype)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum(1).mean().sqrt())


class Times:
    """A model that records the times it is called at."""

    def __init__(self, model):
        self.model, self.parameterization, self.schedule, self.times = model, model.parameterization, model.schedule, []

    def __call__(self, x, t):
        self.times += t.tolist()
        return self.model(x, t)


def fake_module(monkeypatch, name: str, **names) -> None:
    """`import name` gives a module holding `names`, still installed as far as bench.suite.requires can tell."""
    fake = types.ModuleType(name)
    fake.__spec__ = importlib.util.find_spec(name)
    for attr, value in names.items():
        setattr(fake, attr, value)
    monkeypatch.setitem(sys.modules, name, fake)


def fresh_api_fixture(api):
    """The `fresh_api` fixture of an adapter whose api() is cached per process: a test that changes what importing
    the library gives clears it, before and after."""

    @pytest.fixture(name="fresh_api")
    def fresh_api():
        api.cache_clear()
        yield
        api.cache_clear()

    return fresh_api
