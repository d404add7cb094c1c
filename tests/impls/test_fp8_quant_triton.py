import pytest
import torch

from impls.fp8.reference import E4M3, E5M2, QUANTIZERS
from tests.optional import needs_cuda
from tests.triton_interpret import run_interpreted

# The kernels must return what the torch reference returns, bit for bit: the same fp32 scales (same division, same
# clamp, power-of-two rounding on the bits) and the same fp8 codes (round-to-nearest-even on the fp8 grid, including
# the subnormal range, the carry across a power of two and the sign of zero). Inputs span 9 decades so that every
# path is taken. Run under TRITON_INTERPRET=1 in a child, because triton reads it when a kernel is defined.
INTERPRETED = """
import torch
from impls.fp8 import quant_triton
from impls.fp8.reference import E4M3, E5M2, QUANTIZERS

def same(name, x, dtype, pow2):
    q, s = quant_triton.QUANTIZERS[name](x, dtype, pow2)
    rq, rs = QUANTIZERS[name][0](x, dtype, pow2)
    assert q.dtype == rq.dtype and q.shape == rq.shape and s.shape == rs.shape, (name, q.shape, s.shape, rs.shape)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)), (name, x.shape, dtype, pow2)
    assert torch.equal(s, rs), (name, x.shape, dtype, pow2)

g = torch.Generator().manual_seed(0)
for shape in [(37, 300), (130, 257)]:  # odd M, K: tail tiles, tail blocks, a partial row block
    x = torch.randn(*shape, generator=g) * torch.logspace(-6, 3, shape[-1])
    x[0, :5] = torch.tensor([-0.0, 0.0, -1e-30, 1e-30, -0.0])  # signed zeros and values that round to them
    for name in QUANTIZERS:
        for dtype in (E4M3, E5M2):
            for pow2 in (False, True):
                same(name, x, dtype, pow2)
for name in QUANTIZERS:
    same(name, torch.zeros(3, 200), E4M3, False)  # all-zero: scale 1, never 0
    same(name, torch.randn(4, 128, generator=g).bfloat16(), E4M3, False)  # bf16 input, as on a GPU
    same(name, torch.zeros(0, 128), E4M3, False)  # empty
    for bad in (float("nan"), float("inf")):
        x = torch.randn(5, 130, generator=g)
        x[3, 129] = bad
        try:
            quant_triton.QUANTIZERS[name](x)
        except ValueError as e:
            assert "inf or NaN" in str(e)
        else:
            raise AssertionError(f"{name} accepted {bad}")
same("1x128", torch.randn(2, 3, 200, generator=g), E4M3, False)  # leading dims
print("ok")
"""


def test_triton_quantizers_equal_reference_interpreted():
    done = run_interpreted(INTERPRETED)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@needs_cuda
@pytest.mark.parametrize("name", tuple(QUANTIZERS))
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_triton_quantizers_equal_reference_cuda(name, dtype):
    from impls.fp8 import quant_triton

    x = torch.randn(1000, 2000, device="cuda") * torch.logspace(-6, 3, 2000, device="cuda")
    for pow2 in (False, True):
        q, s = quant_triton.QUANTIZERS[name](x, dtype, pow2)
        rq, rs = QUANTIZERS[name][0](x, dtype, pow2)
        assert torch.equal(s, rs)
        assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
