"""Liger-Kernel's fused linear cross-entropy in the packed step (impls/packing/liger.py): the same targets and mean as
the plain head + cross-entropy, its version contract, its skips, and on CUDA its loss, gradients and peak memory
against the plain head. Tests that run liger-kernel skip (with the reason) where it is not installed or no CUDA
device is."""

import importlib
import importlib.metadata
import importlib.util
import inspect
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.memory import peak_bytes
from bench.suite import Skip
from impls.packing import PACKERS, liger
from impls.packing.train import packed_logits, packed_loss, packed_rows
from impls.rmpad.reference import Decoder, DecoderConfig, token_loss
from suites.packing import LIGER, Packing
from tests.optional import needs, needs_cuda

CFG = DecoderConfig(vocab=97, d_model=48, n_heads=3, n_layers=2)
LENGTHS = [5, 9, 3, 12, 7, 1, 8, 16, 4]  # as test_packing_train: one sample fills a row, one has no target
NEEDS = needs("liger_kernel")


@pytest.fixture(autouse=True)
def fresh_api():
    liger.api.cache_clear()  # api() is cached: a faked module must not outlive its test
    yield
    liger.api.cache_clear()


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Decoder(CFG)
    packing = PACKERS["ffd"](LENGTHS, packing_length=16, batch_size=2)
    return model, packed_rows(packing, range(packing.n_rows), CFG.vocab)


def unfused(input, weight, target, reduction="mean"):
    """A stand-in for liger_fused_linear_cross_entropy with its arguments: the logits whole, in plain torch."""
    return F.cross_entropy(F.linear(input, weight).float(), target, reduction=reduction)


def fake_liger(monkeypatch, module):
    """liger_kernel's functional module replaced by `module` (None: not importable), importlib's other answers kept."""
    real = importlib.import_module

    def import_module(name, package=None):
        if name != liger.MODULE:
            return real(name, package)
        if module is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return module

    monkeypatch.setattr(liger.importlib, "import_module", import_module)


def test_hidden_states_are_what_the_head_reads(setup):
    model, (ids, pos, doc, _) = setup
    with torch.no_grad():
        hidden = liger.hidden_states(model, ids, pos, doc)
        assert torch.equal(model.head(hidden), packed_logits(model, ids, pos, doc))  # exactly: the same ops
    assert isinstance(model.head, nn.Linear)  # the head is back


def test_fused_loss_takes_the_plain_steps_targets_and_mean(setup, monkeypatch):
    # The plumbing around the kernel, on a CPU: with the fused op replaced by the unfused one, the step's loss and
    # gradients are the plain step's. fp32: the same terms, only the summation order of the head's gradient differs.
    fake_liger(monkeypatch, SimpleNamespace(liger_fused_linear_cross_entropy=unfused))
    model, tensors = setup
    fused = liger.packed_loss(model, *tensors)
    torch.testing.assert_close(fused, packed_loss(model, *tensors), atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad(fused, list(model.parameters()))
    plain = torch.autograd.grad(packed_loss(model, *tensors), list(model.parameters()))
    for g, r in zip(grads, plain, strict=True):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_no_target_gives_zero_not_nan(monkeypatch):
    fake_liger(monkeypatch, SimpleNamespace(liger_fused_linear_cross_entropy=unfused))
    loss = liger.head_loss(torch.randn(0, 8), torch.randn(11, 8), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0  # token_loss's max(1, N)


@pytest.mark.parametrize("installed", [True, False])
def test_cpu_is_refused_naming_cuda_and_the_missing_install(monkeypatch, installed):
    real = importlib.util.find_spec
    monkeypatch.setattr(liger.importlib.util, "find_spec",
                        lambda name, *a: (real("torch") if installed else None) if name == "liger_kernel"
                        else real(name, *a))
    why = liger.unsupported("cpu")
    assert "needs a CUDA device" in why
    assert ("pip install liger-kernel==0.8.5" in why) is not installed
    # decided without a CUDA device here: on one, only the package can be missing
    missing = "needs liger_kernel, which is not installed (pip install liger-kernel==0.8.5)"
    assert liger.unsupported("cuda:0") == (None if installed else missing)


def test_the_suite_skips_the_variant_on_cpu_before_any_work(monkeypatch):
    suite = Packing()
    params = suite.grid("smoke", "cpu")[0]
    monkeypatch.setattr("suites.packing.make_lengths", None)  # any work past the check would fail on this
    with pytest.raises(Skip, match="CUDA device"):
        suite.measure(LIGER, params, "cpu")
    with pytest.raises(Skip, match="CUDA device"):
        suite.workload(LIGER, params, "meta", target="cpu")
    assert suite.libraries[LIGER] == liger.label() and LIGER in suite.variants


@pytest.mark.parametrize("installed", ["0.8.5", None])
def test_label_names_the_installed_version(monkeypatch, installed):
    def version(name):
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(liger.importlib.metadata, "version", version)
    assert liger.label() == ("liger-kernel 0.8.5" if installed else "liger-kernel")


@pytest.mark.parametrize("module, match", [
    (SimpleNamespace(), "no longer has liger_fused_linear_cross_entropy"),
    (SimpleNamespace(liger_fused_linear_cross_entropy=lambda x, w, y: None), "takes \\['x', 'w', 'y'\\]"),
    (None, "liger_kernel.transformers.functional is gone"),
])
def test_moved_names_raise_api_moved_not_a_skip(monkeypatch, module, match):
    fake_liger(monkeypatch, module)
    with pytest.raises(liger.ApiMoved, match=match):
        liger.api()


@NEEDS
def test_api_contract():
    # The name and arguments this adapter relies on, in the installed liger-kernel (importable on a CPU with triton).
    fused = liger.api()
    assert callable(fused) and set(liger.PARAMS) <= set(inspect.signature(fused).parameters)
    assert liger.label() == f"liger-kernel {liger.version()}"


# On CUDA, against the plain head + cross-entropy: fp32 is the same sums in another order. In bf16 the kernel rounds its
# logits' gradient to bf16 before scaling it by 1/N, and adds the head weight's gradient up chunk by chunk in bf16 (8
# chunks of 16 tokens at the odd shape, 128 of 8 at the large one) where the plain step sums it once in fp32: the
# gradients differ by 4.7e-3 to 7.0e-3 (relative norm, the kernel interpreted on a CPU with TRITON_INTERPRET=1), hence
# 2e-2; the loss, a mean over the tokens, by under 1e-6 there, and 1e-2 leaves room for a GPU's matmul rounding a
# chunk's logits differently from the whole product's.
TOLERANCES = [pytest.param(torch.float32, 1e-5, 1e-4, id="fp32"), pytest.param(torch.bfloat16, 1e-2, 2e-2, id="bf16")]


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@NEEDS
@needs_cuda
@pytest.mark.parametrize("n, d, v", [(123, 42, 431), (1024, 128, 32000)])  # odd; a Llama vocabulary
@pytest.mark.parametrize("dtype, loss_rtol, grad_tol", TOLERANCES)
def test_loss_and_gradients_equal_the_plain_head(n, d, v, dtype, loss_rtol, grad_tol):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g) / d ** 0.5
    target = torch.randint(0, v, (n,), generator=g)
    h_ref, w_ref = (t.to("cuda", dtype).requires_grad_() for t in (hidden, weight))
    h, w = (t.to("cuda", dtype).requires_grad_() for t in (hidden, weight))
    ref = token_loss(F.linear(h_ref, w_ref), target.cuda())
    loss = liger.head_loss(h, w, target.cuda())
    ref.backward()
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=loss_rtol, atol=0)
    assert _rel(h.grad, h_ref.grad) <= grad_tol  # the last hidden states'
    assert _rel(w.grad, w_ref.grad) <= grad_tol  # the LM head weight's


@NEEDS
@needs_cuda
def test_packed_step_equals_the_plain_step_in_bf16(setup):
    model, tensors = setup
    model = model.to("cuda", torch.bfloat16)
    tensors = tuple(t.cuda() for t in tensors)
    fused, plain = liger.packed_loss(model, *tensors), packed_loss(model, *tensors)
    head = [torch.autograd.grad(x, model.head.weight)[0] for x in (fused, plain)]
    torch.testing.assert_close(fused, plain, rtol=1e-2, atol=0)  # bf16, as above (6.0e-3 for the head's gradient)
    assert _rel(*head) <= 2e-2


@NEEDS
@needs_cuda
def test_fused_head_peaks_below_the_plain_head():
    # 4096 tokens, vocabulary 32000, bf16: the plain step holds 262 MB of logits and 524 MB per fp32 copy; the fused
    # one the logits of a chunk of 64 tokens (next_power_of_2(4096 / ceil(32000 / 256))) and the head weight's
    # gradient (16 MB). Half is a wide margin for the allocator's rounding.
    n, d, v = 4096, 256, 32000
    hidden = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(v, d, device="cuda") / d ** 0.5).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, v, (n,), device="cuda")

    def step(loss):
        def run():
            hidden.grad = weight.grad = None
            loss().backward()

        run()  # warm-up (Triton's compiles)
        return peak_bytes(run, "cuda")

    plain = step(lambda: token_loss(F.linear(hidden, weight), target))
    fused = step(lambda: liger.head_loss(hidden, weight, target))
    assert fused < plain / 2, (fused, plain)
