"""torch.autocast on the meta device as a CUDA target runs it (`target_autocast`, for bench.plan).

Autocast casts in its own dispatch key, above autograd, and only tensors on its device: a meta tensor is never
cast, and torch refuses `torch.autocast("meta")` outright. A step that trains under autocast (mtp's bf16 step) would
plan in fp32 activations and none of the casts. While a plan runs, `torch.autocast(device_type="meta")` is the
emulation below for a CUDA target, and not plannable for a CPU one (CPU autocast's op lists differ and are not
modelled).

What the emulation does (aten/src/ATen/autocast_mode.{h,cpp}, checked against torch's own CUDA autocast on fake CUDA
tensors in tests/bench/test_plan_autocast.py; mtp's three quick steps against the H100 run, to the byte):

- A torch-function mode sees each call a step makes into torch (F.linear, Tensor.pow, x @ w, ...). A call whose aten
  op is in CUDA autocast's lists (CUDA_POLICY) gets its floating-point tensor arguments (not fp64) cast as the
  policy says before the op runs, so autograd records the casts and saves the cast tensors, as on the GPU:
  lower_precision_fp (matmuls, convolutions, attention) to the autocast dtype; fp32 (pow, rsqrt, losses, norms) to
  fp32; fp32_set_opt_dtype (softmax, sum, cumsum) passes dtype=fp32 unless the call gives one; fp32_append_dtype
  (norm) the same; promote (addcmul, index_put, ...) to the widest dtype among them. Ops run inside such a call are
  not cast again, as autocast excludes itself for them.
- The weight cache: a lower-precision cast of an fp32 leaf that requires grad (a parameter), outside inference
  mode, is made once per autocast region and reused, held until the outermost region exits
  (torch.clear_autocast_cache): a weight shared by two layers (mtp's output head) is cast once.
- Composites. Autocast also casts inside an op that is in no list, where the op decomposes (in C++, where no
  torch-function mode sees it) into ones that are. F.cross_entropy is modelled: its log_softmax is given the input's
  dtype, which autocast keeps, and nll_loss (fp32) casts the log-probabilities; so are the composites of one listed
  op (F.softmin, torch.special's softmax and log_softmax, 1 / x). For the rest, every op overload of the lists that
  reaches the dispatcher outside a modelled call is checked, and one that autocast would have cast makes the case
  not plannable, naming it; so does a listed op that decomposes before the dispatcher, seen there as what it
  decomposes into (linear as mm, softmax as _softmax, layer_norm as native_layer_norm; _DECOMPOSED). What that check
  cannot see: a listed op inside such a function that reaches the dispatcher as ops in no list (attention taking
  the efficient or cuDNN kernel). A model's own calls (nn.Linear, F.softmax, nn.LayerNorm, F.cross_entropy) are
  modelled where they are made.
- Regions: as CUDA's, any floating dtype (fp32 too), and a nested region decides for the calls made in it (another
  dtype; enabled=False for an fp32 island). A backward run inside a region is not modelled (autocast casts its ops
  too): a listed op there that autocast would cast makes the case not plannable, as above.
- A checkpoint under emulated autocast is not plannable: its recompute restores autocast for the device's type,
  which for meta torch has none, and would run uncast.
"""

from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from bench.memory_ops import tensors_in
from bench.plan_meta import _meta
from bench.suite import NotPlannable

LOWER, FP32, SET_DTYPE, APPEND_DTYPE, PROMOTE = "lower_precision_fp", "fp32", "fp32_set_opt_dtype", \
    "fp32_append_dtype", "promote"


def _policies(policy: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), policy)


# CUDA autocast's lists by aten op name (overloads share their op's policy), as torch 2.11-2.13 register them for
# AutocastCUDA; an op applies where this torch's dispatcher has an AutocastCUDA kernel for it (rms_norm joined the
# fp32 list in 2.13), so the plan follows the installed torch's lists, which a target with another torch may not
# share. A test asserts that every op torch lists is here; another checks the rules against torch's own autocast.
CUDA_POLICY = {
    **_policies(LOWER, """_convolution conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d conv_transpose3d
        convolution cudnn_convolution cudnn_convolution_transpose prelu addmm addmv addr matmul einsum mm mv
        linalg_vecdot linear addbmm baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell
        _thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention
        scaled_dot_product_attention"""),
    **_policies(FP32, """acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow softplus
        layer_norm native_layer_norm group_norm rms_norm frobenius_norm nuclear_norm cosine_similarity
        poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div l1_loss smooth_l1_loss
        huber_loss mse_loss margin_ranking_loss multilabel_margin_loss soft_margin_loss triplet_margin_loss
        multi_margin_loss binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp upsample_nearest1d
        upsample_nearest2d upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d
        _upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa upsample_trilinear3d
        upsample_bicubic2d _upsample_bicubic2d_aa"""),
    **_policies(SET_DTYPE, "prod softmax log_softmax cumprod cumsum linalg_vector_norm linalg_matrix_norm sum"),
    **_policies(APPEND_DTYPE, "norm"),
    **_policies(PROMOTE, "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put scatter_add tensordot"),
    # autocast raises for it ("unsafe to autocast"); so does the emulation
    "binary_cross_entropy": "banned",
    # torch 2.11's own wrapper (cuDNN's packed RNN weights), gone by 2.13; meta never reaches it
    "_cudnn_rnn": "unmodelled",
}
# Python names that reach the lists' ops under another name
_ALIASES = {"__matmul__": "matmul", "__rmatmul__": "matmul", "__pow__": "pow", "__rpow__": "pow",
            "__rdiv__": "reciprocal",  # 1 / x: Tensor.__rtruediv__ is __rdiv__, which calls reciprocal
            # composites of one listed op, whose inner call no mode sees: the listed op's rule
            "softmin": "softmax", "special_softmax": "softmax", "special_log_softmax": "log_softmax"}


@functools.cache
def listed_overloads() -> frozenset[str]:
    """The aten op overloads ("aten::pow.Tensor_Scalar") this torch registers AutocastCUDA kernels for."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return frozenset(name for name in torch._C._dispatch_get_all_op_names()
                     if name.startswith("aten::") and has(name, "AutocastCUDA"))


@functools.cache
def listed() -> frozenset[str]:
    """The ops of listed_overloads, by name: what a call into torch's Python API is matched by (it names no
    overload)."""
    return frozenset(name.removeprefix("aten::").split(".")[0] for name in listed_overloads())


def policy_of(name: str | None) -> str | None:
    return CUDA_POLICY.get(name) if name in listed() else None


# Listed ops that decompose before the dispatcher, by the op they reach it as: seen there outside a modelled call,
# on arguments autocast would have cast first, they make the case not plannable as the listed ops do
_DECOMPOSED = {"_softmax": "softmax", "_log_softmax": "log_softmax", "native_group_norm": "group_norm",
               "nll_loss_forward": "nll_loss", "nll_loss2d_forward": "nll_loss2d"}


def _eligible(t) -> bool:
    """autocast's is_eligible: a floating-point tensor other than fp64 (on meta, standing for the device's)."""
    return isinstance(t, torch.Tensor) and _meta(t) and t.is_floating_point() and t.dtype != torch.float64


class _Region:
    """One emulated autocast region's state: whether it casts, its dtype, the weight cache, and whether a modelled
    call is running."""

    def __init__(self, dtype: torch.dtype, enabled: bool, cache_enabled: bool):
        self.dtype, self.enabled, self.cache_enabled = dtype, enabled, cache_enabled
        self.cache: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        self.inside = 0

    def cast(self, t, to: torch.dtype):
        """autocast's cached_cast of one argument (anything else comes back as it is)."""
        if isinstance(t, (list, tuple)):
            return type(t)(self.cast(x, to) for x in t)
        if not _eligible(t) or t.dtype == to:
            return t
        if to == self.dtype and t.dtype == torch.float32 and t.requires_grad and t.is_leaf and not t._is_view() \
                and self.cache_enabled and not torch.is_inference_mode_enabled():  # (no cache in inference mode)
            ref, cast = self.cache.get(id(t), (None, None))
            if ref is not None and ref() is t:
                return cast
            cast = t.to(to)
            self.cache[id(t)] = (weakref.ref(t), cast)
            return cast
        return t.to(to)

    def apply(self, policy: str, name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """args and kwargs as autocast's wrapper for `policy` passes them to the op."""
        if policy in (SET_DTYPE, APPEND_DTYPE):  # dtype=fp32 unless given, when the first tensor is eligible
            if not self._sets_dtype(args, kwargs):
                return args, kwargs
            if name in ("softmax", "log_softmax") and _first(args, kwargs).dtype == torch.float16:
                raise NotPlannable(f"CUDA's {name} of fp16 to fp32 is one kernel (half_to_float), which meta has not")
            return args, {**kwargs, "dtype": torch.float32}
        to = self._to(policy, name, (*args, *kwargs.values()))
        return tuple(self.cast(a, to) for a in args), {k: self.cast(v, to) for k, v in kwargs.items()}

    def _to(self, policy: str, name: str, args) -> torch.dtype:
        """The dtype a lower_precision_fp, fp32 or promote wrapper casts its eligible arguments to."""
        if policy == "banned":
            raise NotPlannable(f"{name} is unsafe to autocast (torch raises for it under autocast)")
        if policy == "unmodelled":
            raise NotPlannable(f"autocast's own wrapper of aten::{name} is not modelled")
        if policy == PROMOTE:  # the widest: fp32 where any eligible argument is
            dtypes = {t.dtype for t in tensors_in(args) if _eligible(t)}
            if dtypes - {torch.float32, self.dtype}:  # autocast's prioritize raises for a third type
                raise NotPlannable(f"autocast raises for {name} of {sorted(map(str, dtypes))} under {self.dtype}")
            return torch.float32 if torch.float32 in dtypes else self.dtype
        return self.dtype if policy == LOWER else torch.float32

    @staticmethod
    def _sets_dtype(args: tuple, kwargs: dict) -> bool:
        given = kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args)
        return _eligible(_first(args, kwargs)) and not given

    def changes(self, policy: str, name: str, args: tuple, kwargs: dict) -> bool:
        """Whether autocast's wrapper for `policy` would run the op on other dtypes than these arguments' (casting
        nothing itself)."""
        if policy in (SET_DTYPE, APPEND_DTYPE):
            return self._sets_dtype(args, kwargs) and _first(args, kwargs).dtype != torch.float32
        to = self._to(policy, name, (*args, *kwargs.values()))
        return any(_eligible(t) and t.dtype != to for t in tensors_in((args, kwargs)))


def _first(args: tuple, kwargs: dict):
    """The op's first tensor argument (autocast's firstarg), given by position or as input=/self=."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    return first if first is not None else kwargs.get("input", kwargs.get("self"))


class _Casts(TorchFunctionMode):
    """Casts the arguments of the calls in CUDA_POLICY, as the region says."""

    def __init__(self, region: _Region):
        super().__init__()
        self.region = region

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", None)
        if isinstance(func, torch._ops.OpOverload):  # torch.ops.aten.softmax.int: "softmax.int"
            name = func._schema.name.removeprefix("aten::")
        name = _ALIASES.get(name, name)
        policy = policy_of(name)
        # an inner region (or a disabled one) decides; autocast wraps no out= variant
        if policy is None and name != "cross_entropy" or _ACTIVE[-1] is not self.region or \
                kwargs.get("out") is not None:
            return func(*args, **kwargs)
        self.region.inside += 1
        try:
            if name == "cross_entropy":
                return self._cross_entropy(*args, **kwargs)
            args, kwargs = self.region.apply(policy, name, args, kwargs)
            return func(*args, **kwargs)
        finally:
            self.region.inside -= 1

    def _cross_entropy(self, input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                       reduction="mean", label_smoothing=0.0):
        """aten::cross_entropy_loss, in no list, runs log_softmax (fp32_set_opt_dtype) and nll_loss (fp32) inside."""
        if label_smoothing or not isinstance(target, torch.Tensor) or target.is_floating_point():
            raise NotPlannable("F.cross_entropy with probabilities or label smoothing under autocast is not modelled")
        if size_average is not None or reduce is not None:
            reduction = F._Reduction.legacy_get_string(size_average, reduce)
        # cross_entropy_loss calls log_softmax(input, dim, input's dtype): a given dtype, which autocast keeps, so
        # the log-probabilities are in the input's dtype, and nll_loss (fp32) casts them (LossNLL.cpp)
        log_p = torch.log_softmax(input, 1 if input.dim() >= 2 else 0, dtype=input.dtype)
        log_p, weight = self.region.cast(log_p, torch.float32), self.region.cast(weight, torch.float32)
        return F.nll_loss(log_p, target, weight, ignore_index=ignore_index, reduction=reduction)


class _Unmodelled(TorchDispatchMode):
    """Raises NotPlannable for an op of the lists that autocast would cast where no modelled call did (inside a
    composite the emulation does not know)."""

    def __init__(self, region: _Region):
        super().__init__()
        self.region = region

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, policy = _at_dispatcher(func)
        if policy is not None and not self.region.inside and _ACTIVE[-1] is self.region and \
                self.region.changes(policy, name, args, kwargs):
            raise NotPlannable(f"autocast would cast {func._schema.name} inside a call the plan's autocast does not "
                               "model (bench.plan_autocast)")
        return func(*args, **kwargs)


@functools.cache
def _at_dispatcher(func) -> tuple[str, str | None]:
    """(the listed op an overload reaching the dispatcher stands for, its policy, or None where autocast wraps no
    such overload): autocast wraps overloads; a decomposed listed op is seen as what it decomposes into."""
    name = func._schema.name.removeprefix("aten::")
    if name in _DECOMPOSED:
        return _DECOMPOSED[name], policy_of(_DECOMPOSED[name])
    overload = func._schema.name + (f".{func._overloadname}" if func._overloadname != "default" else "")
    return name, policy_of(name) if overload in listed_overloads() else None


class MetaAutocast:
    """torch.autocast for meta tensors planned for a CUDA target (see the module). As CUDA's, any floating dtype (fp32
    too: bf16 inputs of a matmul are then upcast), and a nested region (another dtype, or enabled=False for an fp32
    island) decides for the calls made inside it."""

    def __init__(self, dtype: torch.dtype | None = None, enabled: bool = True, cache_enabled: bool | None = None):
        dtype = torch.get_autocast_dtype("cuda") if dtype is None else dtype  # fp16 unless set
        cache_enabled = torch.is_autocast_cache_enabled() if cache_enabled is None else cache_enabled
        self.region = _Region(dtype, enabled, cache_enabled)
        self._modes: list = []

    def __enter__(self):
        if _ACTIVE:  # a nested region shares the outer one's cache, as autocast's is one per thread
            self.region.cache = _ACTIVE[-1].cache
        _ACTIVE.append(self.region)
        if self.region.enabled:
            self._modes = [_Casts(self.region), _Unmodelled(self.region)]
            for mode in self._modes:
                mode.__enter__()
        return self

    def __call__(self, func):
        """The decorator form, as torch.autocast's."""
        @functools.wraps(func)
        def autocast(*args, **kwargs):
            with MetaAutocast(self.region.dtype, self.region.enabled, self.region.cache_enabled):
                return func(*args, **kwargs)
        return autocast

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []
        _ACTIVE.pop()
        if not _ACTIVE:
            self.region.cache.clear()  # the outermost region's exit clears autocast's cache
        return False


_ACTIVE: list[_Region] = []  # the emulated regions entered, enabled or not, innermost last


def _casting() -> _Region | None:
    """The innermost region, where it casts."""
    return _ACTIVE[-1] if _ACTIVE and _ACTIVE[-1].enabled else None


def _refused(original):
    """`original` (a checkpoint's entry) refusing to run inside an emulated region that casts."""
    def checkpoint(*args, **kwargs):
        if _casting():
            raise NotPlannable("a checkpoint under autocast recomputes with autocast on, which torch has no meta "
                               "autocast to restore: the recompute's casts cannot be planned")
        return original(*args, **kwargs)
    return checkpoint


@contextmanager
def target_autocast(target: str):
    """torch.autocast(device_type="meta", ...) emulated as on `target` ("cuda"; "cpu" is not plannable) while
    active; for a CUDA target, torch.autocast("cuda") and torch.cuda.amp.autocast too (a step's tensors are on meta,
    which torch's would leave uncast). Autocast for any other device type is torch's own."""
    original, cuda_amp = torch.autocast, torch.cuda.amp.autocast
    cuda = torch.device(target).type == "cuda"

    def autocast(device_type: str, dtype: torch.dtype | None = None, enabled: bool = True,
                 cache_enabled: bool | None = None):
        if device_type == "meta" and not cuda and enabled:
            raise NotPlannable("the step runs under CPU autocast, whose op lists the plan does not model")
        if device_type == "meta" or device_type == "cuda" and cuda:
            return MetaAutocast(dtype, enabled, cache_enabled)
        return original(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    def cuda_autocast(enabled: bool = True, dtype: torch.dtype = torch.float16, cache_enabled: bool = True):
        return autocast("cuda", dtype, enabled, cache_enabled)

    ckpt = torch.utils.checkpoint
    generator, reentrant = ckpt._checkpoint_without_reentrant_generator, ckpt.CheckpointFunction.forward
    torch.autocast = torch.amp.autocast = autocast
    if cuda:
        torch.cuda.amp.autocast = cuda_autocast
    ckpt._checkpoint_without_reentrant_generator = _refused(generator)
    ckpt.CheckpointFunction.forward = staticmethod(_refused(reentrant))
    try:
        yield
    finally:
        torch.autocast = torch.amp.autocast = original
        torch.cuda.amp.autocast = cuda_amp
        ckpt._checkpoint_without_reentrant_generator = generator
        ckpt.CheckpointFunction.forward = staticmethod(reentrant)


def cast_for_autocast(name: str, args: tuple) -> tuple:
    """`args` of a call to aten op `name` as an emulated autocast region casts them (unchanged outside one): for the
    plan's own swaps of F.scaled_dot_product_attention and F.rms_norm, which no torch-function mode sees."""
    region, policy = _casting(), policy_of(name)
    return tuple(args) if region is None or policy is None else region.apply(policy, name, tuple(args), {})[0]
