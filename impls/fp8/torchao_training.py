"""torchao's float8 training, the library users pick, as a `convert` for impls.fp8.train: the same model, data, steps
and high-precision Linears (HIGH_PRECISION) as our recipes, so its loss gap reads against the same reference.

torchao.float8.convert_to_float8_training swaps nn.Linear for its Float8Linear, configured by one of its named recipes
(Float8LinearConfig.from_recipe_name), untouched: what a user gets. Its GEMMs are torch._scaled_mm (emulate=False, the
default) on every device; where torch's kernel cannot take the recipe there, `unsupported` says why and the case is
skipped with that reason rather than quietly emulated.

- tensorwise: dynamic per-tensor scales; x and W in E4M3, dY in E5M2 (torchao's default), fast accumulation for the
  forward GEMM only.
- rowwise: axiswise (per row of each [rows, K] operand) scales, E4M3 for x, W and dY; torchao's scale multiplies
  (448 / amax rounded down to a power of two, i.e. our amax / 448 rounded up). For an fp32 model its rowwise GEMM
  writes bf16 and casts back (torchao's workaround for _scaled_mm's output dtypes): 55 dB from our rowwise forward.

Eager, as ours: torchao fuses its casts under torch.compile, which this suite does not apply to any variant.

No blockwise recipe: torchao 0.18 has none in its public API (Float8BlockwiseLinear lives under
torchao.prototype.blockwise_fp8_training, Triton kernels only). No bare scaled GEMM either: torchao's float8 GEMM is
torch._scaled_mm, which the fp8 suite's gemm part already times for tensorwise and rowwise.

torchao is imported lazily (`api`), only by a case or a test that uses it; it is written against torchao 0.18.0
(pip install -e ".[ecosystem]"), and a torchao whose names moved raises ApiMoved naming the name, never a skip.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from impls import libraries
from impls.fp8.train import HIGH_PRECISION
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's

WRITTEN_FOR = "0.18.0"
LIBRARY = libraries.Library("torchao", WRITTEN_FOR, "impls/fp8/torchao_training.py")
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved
RECIPES = ("tensorwise", "rowwise")  # torchao's Float8LinearRecipeName values used here
NAMES = ("convert_to_float8_training", "Float8LinearConfig", "Float8LinearRecipeName")  # from torchao.float8


def api() -> SimpleNamespace:
    """torchao.float8's names used here, imported quietly; ApiMoved names the one that is gone. An absent torchao
    raises ModuleNotFoundError (callers check for it first and skip)."""
    # torchao logs failed loads of its CUDA extension .so files (expected on a CPU build or a GPU the wheel was not
    # built for; float8 training runs on torch._scaled_mm, not on them), and torch a deprecation for torchao's Enum
    # pytree registration: warnings on every import, none about what runs here. Import errors still raise
    with libraries.quiet():
        import torchao.float8 as f8
    missing = [n for n in NAMES if not hasattr(f8, n)]
    if missing:
        raise _moved(f"torchao.float8 no longer has {', '.join(missing)}")
    ns = SimpleNamespace(**{n: getattr(f8, n) for n in NAMES})
    if not callable(getattr(ns.Float8LinearConfig, "from_recipe_name", None)):
        raise _moved("torchao.float8.Float8LinearConfig.from_recipe_name is gone")
    names = {r.value for r in ns.Float8LinearRecipeName}
    if not set(RECIPES) <= names:
        raise _moved(f"torchao.float8.Float8LinearRecipeName has no {sorted(set(RECIPES) - names)} (it has "
                     f"{sorted(names)})")
    params = inspect.signature(ns.convert_to_float8_training).parameters
    if not {"config", "module_filter_fn"} <= set(params):
        raise _moved(f"torchao.float8.convert_to_float8_training takes {list(params)}, not config and "
                     f"module_filter_fn")
    return ns


def config(recipe: str):
    """torchao's Float8LinearConfig for one of RECIPES, as Float8LinearConfig.from_recipe_name builds it."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    return api().Float8LinearConfig.from_recipe_name(recipe)


def converter(recipe: str) -> Callable[[nn.Module], nn.Module]:
    """convert(model): torchao's float8 training on every nn.Linear of model, in place, except HIGH_PRECISION."""
    ns, cfg = api(), config(recipe)

    def convert(model: nn.Module) -> nn.Module:
        return ns.convert_to_float8_training(model, config=cfg,
                                             module_filter_fn=lambda _, fqn: fqn not in HIGH_PRECISION)

    return convert


def unsupported(recipe: str, device="cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Why torchao's recipe cannot train on `device` (torch's or torchao's own words), or None when it can: one
    forward and backward of a converted 32x32 Linear on 16 tokens (multiples of 16, as torch._scaled_mm wants)."""
    convert = converter(recipe)  # outside the try: a moved API is an error, not a skip
    lin = convert(nn.Sequential(nn.Linear(32, 32)).to(device=device, dtype=dtype))
    x = torch.randn(16, 32, device=device, dtype=dtype, requires_grad=True)
    try:
        lin(x).float().sum().backward()
    except (RuntimeError, NotImplementedError, AssertionError) as e:  # torch._scaled_mm's and torchao's checks
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"torchao {recipe} float8 training cannot run on {device} ({dtype}): {first}"
    return None


if __name__ == "__main__":
    from impls.fp8.train import loss_gap, train

    ref = train(None)
    for r in RECIPES:
        final, mean = loss_gap(ref, train(None, convert=converter(r)))
        print(f"torchao {r:<10} final gap {100 * final:.3f}%  mean gap {100 * mean:.3f}%")
