"""Hugging Face transformers' MoE experts, as a user of the library runs them: a model's experts module under one of
the library's `experts_implementation`s (transformers 5.x: `from_pretrained(..., experts_implementation=...)`, or
the config's `experts_implementation`), given our expert weights and our routed tokens, so that it reads against
reference.loop_dispatch and grouped.py's dispatches.

The module is DeepseekV3Experts (Qwen3-MoE's and Mixtral's experts are the same code and layout), built from a
DeepseekV3Config of our shape (hidden_act "silu"). What each implementation computes (transformers/integrations/moe.py):
- eager: the module's own forward: one_hot masks of the routing, then for each expert that has a token a gather,
  F.linear by its gate_up_proj, SiLU(gate) * up, F.linear by its down_proj, times the routing weight, index_add_
  into the output: the shape of our loop.
- grouped_mm (the library's default): the T x K slots sorted by expert (torch.sort), offsets from histc, each
  projection one torch.nn.functional.grouped_mm (torch._grouped_mm) over the sorted rows, then unsorted and summed
  over each token's K rows: the shape of our grouped_mm dispatch. Where transformers judges torch's kernel unusable
  (CPU with torch <= 2.8, or <= 2.10 on tensors not 16-byte aligned; CUDA before sm80; a compiled graph not in bf16)
  it runs its own `_grouped_mm_fallback` (a torch.mm per expert) without a word: `grouped_gemms` counts which of
  the two ran, so that no fallback passes for torch's kernel.
- batched_mm: every slot's expert weights gathered (gate_up_proj[expert_ids]: [T*K, 2H, D], and [T*K, D, H]) and one
  bmm per projection over them, summed per token: no sort and no host sync, for T*K copies of weight rows (the
  library's choice for a few tokens, as in decoding; at the suite's full sizes those copies take hundreds of GB).

Conventions against ours (reference.RoutedExperts): transformers keeps nn.Linear's [out, in] layout, so
gate_up_proj [E, 2H, D] is w1 [E, D, 2H] transposed and down_proj [E, D, H] is w2 [E, H, D] transposed; gate then up
along 2H, as ours (chunk(2)); the activation SiLU(gate) * up; the routing weight multiplies each expert's output. No
bias, no post-expert norm. Equal to loop_dispatch up to summation order (tests/impls/test_hf_moe.py).

Not here: transformers' deepgemm and sonicmoe implementations, whose kernels it downloads from the Hugging Face Hub
(kernels-community) at first use: a pinned pip install does not give them, and the GPU machine reaches no network.

transformers is optional (pip install -e ".[ecosystem]"), imported on first use, never when this module is; it is
written against transformers 5.23.0, and a transformers whose names moved raises ApiMoved naming the name, never a
skip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from impls import libraries
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's
from impls.moe.reference import RoutedExperts

WRITTEN_FOR = "5.23.0"
LIBRARY = libraries.Library("transformers", WRITTEN_FOR, "impls/moe/hf.py")
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved
IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")
MODULES = {"experts": "transformers.models.deepseek_v3.modeling_deepseek_v3",
           "config": "transformers.models.deepseek_v3.configuration_deepseek_v3",
           "interface": "transformers.integrations.moe"}
PATHS = {"torch": "aten::_grouped_mm", "fallback": "transformers::grouped_mm_fallback"}  # grouped_mm's GEMMs, by op


def _import(name: str):
    try:
        return libraries.quiet_import(name)
    except ModuleNotFoundError as e:
        if e.name == "transformers":  # the package itself: the caller's `requires` names what to install
            raise
        if (e.name or "").startswith("transformers."):
            raise _moved(f"{name} is gone") from e
        raise  # something transformers needs is missing: that error stands


@functools.cache
def api() -> SimpleNamespace:
    """The names used here, imported once; ApiMoved names the one that is gone. An absent transformers raises
    ModuleNotFoundError (callers check for it first, and skip)."""
    modules = {k: _import(m) for k, m in MODULES.items()}
    names = {"Experts": ("experts", "DeepseekV3Experts"), "Config": ("config", "DeepseekV3Config"),
             "functions": ("interface", "ALL_EXPERTS_FUNCTIONS")}
    found = {k: getattr(modules[m], n, None) for k, (m, n) in names.items()}
    missing = [f"{MODULES[names[k][0]]}.{names[k][1]}" for k, v in found.items() if v is None]
    if missing:
        raise _moved(f"no {', '.join(missing)}")
    gone = [i for i in IMPLEMENTATIONS if i != "eager" and i not in found["functions"]]
    if gone:
        raise _moved(f"ALL_EXPERTS_FUNCTIONS has no experts_implementation {', '.join(gone)} (it has "
                     f"{', '.join(found['functions'])})")
    return SimpleNamespace(**found)


def config(n: int, dim: int, hidden: int, implementation: str):
    """The DeepseekV3Config of E = n experts of width `hidden` on a `dim`-wide stream, under `implementation`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}")
    cfg = api().Config(hidden_size=dim, moe_intermediate_size=hidden, n_routed_experts=n, num_hidden_layers=1,
                       hidden_act="silu", experts_implementation=implementation)
    if getattr(cfg, "_experts_implementation", None) != implementation:
        raise _moved(f"DeepseekV3Config(experts_implementation={implementation!r}) no longer sets "
                     f"_experts_implementation")
    return cfg


def experts(ours: RoutedExperts, implementation: str) -> nn.Module:
    """transformers' experts module holding `ours`'s weights in its layout (copies on their device and dtype, which
    may be meta). Built on meta and given the copies: its own [E, 2H, D] draw would be a host-sized allocation."""
    n, dim, hidden = ours.n, ours.w1.shape[1], ours.hidden
    cfg = config(n, dim, hidden, implementation)
    with torch.device("meta"):
        module = api().Experts(cfg)
    shapes = {"gate_up_proj": (n, 2 * hidden, dim), "down_proj": (n, dim, hidden)}
    for name, shape in shapes.items():
        have = getattr(module, name, None)
        if not isinstance(have, nn.Parameter) or tuple(have.shape) != shape:
            raise _moved(f"DeepseekV3Experts.{name} is {None if have is None else tuple(have.shape)}, not the "
                         f"[out, in] layout {shape}")
    if getattr(module, "is_transposed", False) or not getattr(module, "has_gate", True):
        raise _moved("DeepseekV3Experts is no longer a gated [out, in] layout (is_transposed or has_gate changed)")
    with torch.no_grad():
        module.gate_up_proj = nn.Parameter(ours.w1.detach().transpose(1, 2).contiguous())  # [E, 2H, D]
        module.down_proj = nn.Parameter(ours.w2.detach().transpose(1, 2).contiguous())  # [E, D, H]
    return module


def ours_grads(module: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """The library module's weight gradients in our layout: (w1's [E, D, 2H], w2's [E, H, D])."""
    return tuple(None if p.grad is None else p.grad.transpose(1, 2) for p in (module.gate_up_proj, module.down_proj))


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def grouped_gemms(forward: Callable[[], Tensor]) -> tuple[dict[str, int], Tensor]:
    """({"torch": GEMMs of one call of `forward` run as torch._grouped_mm, "fallback": those run as transformers'
    _grouped_mm_fallback}, its output). grouped_mm's forward runs two GEMMs (gate_up, then down), each one or the
    other; eager and batched_mm run neither (F.linear, bmm)."""
    with _Ops() as ops:
        out = forward()
    return {path: ops.names.count(op) for path, op in PATHS.items()}, out


if __name__ == "__main__":
    from impls.moe.reference import loop_dispatch

    torch.manual_seed(0)
    ours = RoutedExperts(16, 64, 32)
    x, idx, w = torch.randn(256, 64), torch.randint(0, 16, (256, 4)), torch.rand(256, 4)
    ref = loop_dispatch(x, idx, w, ours)
    for impl in IMPLEMENTATIONS:
        module = experts(ours, impl)
        paths, y = grouped_gemms(lambda: module(x, idx, w))  # noqa: B023
        print(f"transformers {version()} {impl:<10} max |library - loop| = {(y - ref).abs().max().item():.2e}  "
              f"grouped GEMMs: {paths}")
