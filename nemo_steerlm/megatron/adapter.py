"""Every megatron-core patch that CPU-only machines need, in one version-checked place.

megatron-core is written for CUDA. On a machine without a GPU (CI, laptops, the 2-core dev box) a handful of
allocations and the RNG tracker hard-code CUDA. :func:`apply_cpu_patches` fixes exactly those, is idempotent, does
nothing when CUDA is available, and refuses megatron-core versions it was not written against (0.16.x) unless
``NEMO_STEERLM_ALLOW_UNTESTED_MEGATRON=1`` is set: the patches reach into module internals that change between
releases, and a silent mismatch would be far worse than a clear error.

The patches, each the narrowest found to work (measured on megatron-core 0.16.1, torch 2.13 CPU, gloo):

1. **RNG tracker.** ``CudaRNGStatesTracker.add``/``fork`` read and write ``torch.cuda`` RNG states, so
   ``model_parallel_cuda_manual_seed`` raises without CUDA. :class:`CpuRNGStatesTracker` keeps the same named
   states as CPU ``torch.Generator`` states and swaps the default CPU generator in ``fork`` (on CPU that generator
   is the "device" generator dropout draws from). It is installed by rebinding the class name that
   ``initialize_rng_tracker`` instantiates, and any already-created tracker is reset.
2. **GlobalMemoryBuffer.get_tensor** allocates its scratch buffer on ``torch.cuda.current_device()`` (used by the
   sequence-parallel all-gather). Replaced by the same method allocating on CPU.
3. **Module-scoped CUDA device lookups.** About a hundred allocations in the TP/SP mappings, the TP layers, the
   pipeline p2p communication, the DDP grad buffers, grad clipping and RoPE use ``torch.cuda.current_device()``, and
   ``pipeline_parallel/schedules.py`` (like ``clip_grads.py``) has ``device="cuda"`` literals; the static KV cache of
   generation (``Attention._allocate_memory``) is allocated on the CUDA device too. Rather than patching
   ``torch`` globally (which would lie to every other library in the process), the module-level name ``torch`` of
   just those megatron modules is rebound to :class:`_CpuTorchView`: a read-through view of ``torch`` whose
   ``cuda.current_device()`` is the CPU device, whose ``cuda.synchronize()`` is a no-op, and whose tensor
   factories map a CUDA ``device=`` to CPU. Everything else is the real ``torch`` object.
4. **Default causal mask.** ``transformer.utils.get_default_causal_mask`` (used by the local attention's softmax
   when no mask is passed) builds the mask with ``device="cuda"``; ``fusions.fused_softmax`` imported the helper
   by name, so the CPU version is bound there (and in ``transformer.utils``).
5. **Gradient clipping.** Without apex/TE, ``optimizer.clip_grads`` uses ``utils.local_multi_tensor_l2_norm``,
   which returns its result with ``device="cuda"``; ``clip_grads.l2_norm_impl`` is rebound to the same computation
   returning a CPU tensor (only when that local fallback is the one in use). ``clip_grad_by_total_norm_fp32``
   asserts ``grad.type() == "torch.cuda.FloatTensor"``; the name ``optimizer.optimizer`` calls is rebound to the
   same function checking the dtype instead.
6. **WrappedTorchNorm with sequence parallel.** The torch-norm fallback (no apex/TE) asserts
   ``not config.sequence_parallel``. The norm itself is sequence-local, so it is built from a copy of the config with
   sequence parallel off, and its parameters are tagged ``sequence_parallel=True`` so ``finalize_model_grads``
   all-reduces their gradients over the tensor-parallel group, exactly as megatron does for its fused norms.
7. **Tied embeddings across pipeline stages.** ``LanguageModule.setup_embeddings_and_output_layer`` moves the shared
   word-embedding weight with ``weight.data.cuda()`` before all-reducing it between the first and last stage. A
   tensor method is not reachable through a module's ``torch`` name, so that one call runs with ``Tensor.cuda`` as
   the identity (the weight is already where the CPU process group needs it), restored right after.
8. **Activation recomputation.** ``tensor_parallel.CheckpointFunction`` (full recomputation) saves and restores the
   "CUDA" RNG state through ``random._get_cuda_rng_state``/``_set_cuda_rng_state`` so dropout replays identically.
   On CPU the device generator is the default CPU generator, so both names are rebound to
   ``torch.get_rng_state``/``torch.set_rng_state``.
9. **bf16/fp16 parameters with fp32 main weights.** ``Float16OptimizerWithFloat16Params`` sorts parameters by
   ``param.type()`` and accepts only ``torch.cuda.*Tensor`` names. The name ``get_megatron_optimizer`` instantiates
   is rebound to a subclass whose constructor sees each CPU parameter's type under its CUDA name (an instance
   attribute shadowing ``Tensor.type`` on those parameters, removed right after); its other ``device="cuda"``
   allocations go through patch 3.
10. **Distributed optimizer.** ``DistributedOptimizer`` sorts the parameters it shards by ``param.type()`` the same
   way (``torch.cuda.FloatTensor`` / ``HalfTensor`` / ``BFloat16Tensor``). The name ``get_megatron_optimizer``
   instantiates is rebound to a subclass constructed under the same CUDA type names as patch 9, and
   ``optimizer.distrib_optimizer`` joins the modules of patch 3 (it allocates the state of a checkpoint load on the
   current CUDA device). Its collectives need no patch on gloo (torch 2.13): the grad buffers' ``reduce_scatter_tensor``
   and the parameters' ``all_gather_into_tensor`` are measured to work, and the checkpoint gather/scatter use
   megatron's gloo data-parallel group anyway.

One more patch is not about CUDA but about megatron's fallback to ``torch.optim.AdamW`` when neither apex nor
TransformerEngine is installed (every CPU machine, and GPU machines without them); :func:`apply_torch_adam_patches`
applies it whenever that fallback is in use, with or without CUDA:

11. **Restoring the distributed optimizer's state into torch's AdamW.** ``DistributedOptimizer.load_state_dict``
   gives every parameter's state one shared ``step`` tensor, which torch's AdamW then increments once per parameter
   in each step (wrong bias correction after a resume), and ``_set_main_param_and_optimizer_states`` copies every
   state key, ``step`` included, from a checkpoint that holds only the main weight and the two moments
   (``KeyError: 'step'``). After megatron's load each state gets its own copy of ``step``, and the copy skips it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import operator
import os
from collections.abc import Iterator
from functools import reduce
from typing import Any

import torch

ALLOW_UNTESTED_ENV = "NEMO_STEERLM_ALLOW_UNTESTED_MEGATRON"
SUPPORTED_MEGATRON_SERIES: tuple[str, ...] = ("0.16",)

# Modules whose module-level ``torch`` is rebound to the CPU view (patch 3). Each allocates on the CUDA device.
CUDA_DEVICE_MODULES: tuple[str, ...] = (
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.optimizer",
    # a checkpoint load allocates the distributed optimizer's state shards on the current CUDA device
    "megatron.core.optimizer.distrib_optimizer",
    # dist_checkpointing's writer calls torch.cuda.synchronize() before saving (.nemo archives)
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.dist_checkpointing.exchange_utils",
    # the static KV cache of generation (Attention._allocate_memory) is allocated on the CUDA device
    "megatron.core.transformer.attention",
)

_TENSOR_FACTORIES: tuple[str, ...] = ("empty", "zeros", "ones", "full", "tensor", "arange")

_state: dict[str, Any] = {"applied": False, "originals": {}}


class MegatronVersionError(RuntimeError):
    """The installed megatron-core is not a version the CPU patches were written and tested for."""


def installed_megatron_version() -> str:
    """Return the installed megatron-core version string.

    Returns:
        ``megatron.core.__version__`` when present, otherwise the ``megatron-core`` distribution version.
    """
    import megatron.core

    version = getattr(megatron.core, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import version as dist_version

    return dist_version("megatron-core")


def check_megatron_version(version: str | None = None) -> str:
    """Refuse megatron-core versions the CPU patches were not written for.

    Args:
        version: version string to check; the installed one when ``None``.

    Returns:
        The checked version.

    Raises:
        MegatronVersionError: if the version is outside ``SUPPORTED_MEGATRON_SERIES`` and
            ``NEMO_STEERLM_ALLOW_UNTESTED_MEGATRON`` is not ``1``.
    """
    version = installed_megatron_version() if version is None else version
    series = ".".join(version.split(".")[:2])
    if series in SUPPORTED_MEGATRON_SERIES:
        return version
    if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        return version
    supported = ", ".join(f"{s}.x" for s in SUPPORTED_MEGATRON_SERIES)
    raise MegatronVersionError(
        f"megatron-core {version} is installed, but nemo_steerlm.megatron.adapter's CPU patches were written and "
        f"tested for megatron-core {supported}. Install megatron-core==0.16.1 (pinned in pyproject.toml), or set "
        f"{ALLOW_UNTESTED_ENV}=1 to try the patches anyway."
    )


def cpu_patches_applied() -> bool:
    """Return whether :func:`apply_cpu_patches` has patched megatron-core in this process."""
    return bool(_state["applied"])


def apply_cpu_patches(force: bool = False) -> bool:
    """Apply every CPU patch to megatron-core, once.

    Does nothing when CUDA is available (unless ``force``). Safe to call any number of times.

    Args:
        force: apply the patches even when CUDA is available (for tests of the adapter itself).

    Returns:
        ``True`` if the patches are in effect after the call, ``False`` if CUDA made them unnecessary.

    Raises:
        MegatronVersionError: if the installed megatron-core is not a supported version.
    """
    if _state["applied"]:
        return True
    if torch.cuda.is_available() and not force:
        return False
    check_megatron_version()
    _patch_rng_tracker()
    _patch_global_memory_buffer()
    _patch_cuda_device_modules()
    _patch_causal_mask()
    _patch_grad_norm()
    _patch_wrapped_torch_norm()
    _patch_tied_embedding_setup()
    _patch_checkpoint_rng_states()
    _patch_float16_optimizer()
    _patch_distributed_optimizer()
    apply_torch_adam_patches()
    _state["applied"] = True
    return True


# --------------------------------------------------------------------------------------------- patch 1: RNG tracker


def _make_cpu_tracker_class() -> type:
    from megatron.core.tensor_parallel import random as mrandom

    base = _state["originals"].get("CudaRNGStatesTracker", mrandom.CudaRNGStatesTracker)

    class CpuRNGStatesTracker(base):  # type: ignore[misc, valid-type]
        """``CudaRNGStatesTracker`` whose named states are CPU ``torch.Generator`` states.

        ``fork(name)`` swaps the default CPU generator to the named state for the duration of the block, so
        dropout in tensor-parallel regions draws from a per-TP-rank stream, as megatron intends on GPU.
        """

        def __init__(self, use_cudagraphable_rng: bool = False, is_inference_rng_tracker: bool = False):
            if use_cudagraphable_rng:
                raise RuntimeError("CUDA-graph-safe RNG states are not available on CPU")
            super().__init__(use_cudagraphable_rng=False, is_inference_rng_tracker=is_inference_rng_tracker)

        def add(self, name: str, seed: int) -> None:
            """Track a new named CPU generator state seeded with ``seed``."""
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
            self.states_[name] = generator.get_state()

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            """Run the block with the default CPU generator set to the named state, then restore it."""
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    return CpuRNGStatesTracker


def _patch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    _state["originals"].setdefault("CudaRNGStatesTracker", mrandom.CudaRNGStatesTracker)
    # initialize_rng_tracker instantiates the module-level name ``CudaRNGStatesTracker``; our subclass keeps
    # ``isinstance(tracker, CudaRNGStatesTracker)`` checks (get_all_rng_states) true.
    mrandom.CudaRNGStatesTracker = _make_cpu_tracker_class()
    mrandom.initialize_rng_tracker(force_reset=True)


# ------------------------------------------------------------------------------------ patch 2: GlobalMemoryBuffer


def _cpu_get_tensor(self: Any, tensor_shape: Any, dtype: torch.dtype, name: str, mem_alloc_context: Any = None):
    """``GlobalMemoryBuffer.get_tensor`` allocating on CPU (megatron-core 0.16.1 logic otherwise)."""
    required_len = reduce(operator.mul, tensor_shape, 1)
    buffer = self.buffer.get((name, dtype), None)
    if buffer is None or buffer.numel() < required_len:
        with (mem_alloc_context or contextlib.nullcontext)():
            self.buffer[(name, dtype)] = torch.empty(required_len, dtype=dtype, device="cpu", requires_grad=False)
    return self.buffer[(name, dtype)][0:required_len].view(*tensor_shape)


def _patch_global_memory_buffer() -> None:
    from megatron.core.utils import GlobalMemoryBuffer

    _state["originals"].setdefault("GlobalMemoryBuffer.get_tensor", GlobalMemoryBuffer.get_tensor)
    GlobalMemoryBuffer.get_tensor = _cpu_get_tensor


# ----------------------------------------------------------------------------- patch 3: module-scoped device view


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_factory(factory: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        kwargs.pop("pin_memory", None)
        return factory(*args, **kwargs)

    call.__name__ = getattr(factory, "__name__", "factory")
    call.__doc__ = f"``torch.{call.__name__}`` with CUDA devices mapped to CPU (nemo_steerlm CPU adapter)."
    return call


class _CpuCudaView:
    """``torch.cuda`` as seen by a patched megatron module: the "current device" is the CPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> torch.device:
        """Return the CPU device, where megatron's "current CUDA device" allocations go on CPU machines."""
        return torch.device("cpu")

    @staticmethod
    def synchronize(device: Any = None) -> None:
        """No-op: CPU collectives are synchronous."""
        return None


class _CpuTorchView:
    """Read-through view of ``torch`` for one megatron module, with CUDA allocations redirected to CPU."""

    def __init__(self) -> None:
        self.cuda = _CpuCudaView()
        for name in _TENSOR_FACTORIES:
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _patch_cuda_device_modules() -> None:
    view = _CpuTorchView()
    for module_name in CUDA_DEVICE_MODULES:
        module = importlib.import_module(module_name)
        if module.__dict__.get("torch") is not torch:
            raise MegatronVersionError(
                f"{module_name} no longer binds `torch` at module level; the CPU adapter needs updating"
            )
        _state["originals"].setdefault(f"{module_name}.torch", torch)
        module.torch = view


# ------------------------------------------------------------------------------------ patch 4: default causal mask


@functools.lru_cache(maxsize=32)
def _cpu_default_causal_mask(sq: int) -> torch.Tensor:
    """``get_default_causal_mask`` on CPU: ``True`` above the diagonal (masked)."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _patch_causal_mask() -> None:
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as transformer_utils

    _state["originals"].setdefault("get_default_causal_mask", transformer_utils.get_default_causal_mask)
    transformer_utils.get_default_causal_mask = _cpu_default_causal_mask
    fused_softmax.get_default_causal_mask = _cpu_default_causal_mask


# ---------------------------------------------------------------------------------- patch 5: gradient-norm fallback


def _cpu_multi_tensor_l2_norm(chunk_size: int, noop_flag: Any, tensor_lists: Any, per_tensor: bool, *args: Any):
    """``utils.local_multi_tensor_l2_norm`` returning its ``[1]`` fp32 norm on CPU."""
    l2 = [[torch.norm(tensor) for tensor in tensor_list] for tensor_list in tensor_lists]
    l2_reduced = torch.norm(torch.tensor(l2))
    return torch.tensor([float(l2_reduced)], dtype=torch.float), None


def _patch_grad_norm() -> None:
    from megatron.core import utils as core_utils
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as optimizer_module

    if clip_grads.l2_norm_impl is core_utils.local_multi_tensor_l2_norm:
        _state["originals"].setdefault("clip_grads.l2_norm_impl", clip_grads.l2_norm_impl)
        clip_grads.l2_norm_impl = _cpu_multi_tensor_l2_norm
    _state["originals"].setdefault("clip_grad_by_total_norm_fp32", optimizer_module.clip_grad_by_total_norm_fp32)
    optimizer_module.clip_grad_by_total_norm_fp32 = _cpu_clip_grad_by_total_norm_fp32
    clip_grads.clip_grad_by_total_norm_fp32 = _cpu_clip_grad_by_total_norm_fp32


def _cpu_clip_grad_by_total_norm_fp32(
    parameters: Any, max_norm: float, total_norm: float, use_decoupled_grad: bool = False
) -> None:
    """``clip_grads.clip_grad_by_total_norm_fp32`` (0.16.1) checking fp32 by dtype instead of CUDA tensor type."""
    from megatron.core.optimizer import clip_grads

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for param in parameters:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is None:
            continue
        allowed = (torch.float32, torch.bfloat16) if use_decoupled_grad else (torch.float32,)
        if grad.dtype not in allowed:
            raise TypeError(f"gradient clipping expects {allowed} gradients, got {grad.dtype}")
        grads.append(clip_grads.to_local_if_dtensor(grad).detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for grad in grads:
            grad.mul_(clip_coeff)


# ------------------------------------------------------------------------------ patch 6: WrappedTorchNorm with SP


def _patch_wrapped_torch_norm() -> None:
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    original_new = WrappedTorchNorm.__new__
    _state["originals"].setdefault("WrappedTorchNorm.__new__", original_new)

    def cpu_new(cls: type, config: Any, hidden_size: int, eps: float = 1e-5, **kwargs: Any) -> torch.nn.Module:
        if not config.sequence_parallel:
            return original_new(cls, config, hidden_size, eps, **kwargs)
        local_config = copy.copy(config)  # a shallow copy skips TransformerConfig.__post_init__ validation
        object.__setattr__(local_config, "sequence_parallel", False)
        norm = original_new(cls, local_config, hidden_size, eps, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = True  # finalize_model_grads all-reduces these over the TP group
        return norm

    WrappedTorchNorm.__new__ = staticmethod(cpu_new)


# ---------------------------------------------------------------- patch 7: tied embeddings across pipeline stages


@contextlib.contextmanager
def _tensor_cuda_is_identity() -> Iterator[None]:
    """Within the block ``Tensor.cuda()`` returns the tensor itself (CPU machines only)."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _patch_tied_embedding_setup() -> None:
    from megatron.core.models.common.language_module.language_module import LanguageModule

    original = LanguageModule.setup_embeddings_and_output_layer
    _state["originals"].setdefault("setup_embeddings_and_output_layer", original)

    @functools.wraps(original)
    def setup_on_cpu(self: Any) -> None:
        with _tensor_cuda_is_identity():
            original(self)

    LanguageModule.setup_embeddings_and_output_layer = setup_on_cpu


# ------------------------------------------------------------------------- patch 8: recomputation's RNG states
def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _patch_checkpoint_rng_states() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    _state["originals"].setdefault("_get_cuda_rng_state", mrandom._get_cuda_rng_state)
    _state["originals"].setdefault("_set_cuda_rng_state", mrandom._set_cuda_rng_state)
    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state


# ------------------------------------------------------------- patch 9: bf16/fp16 parameters with fp32 main weights


@contextlib.contextmanager
def _cuda_type_names(params: list[torch.Tensor]) -> Iterator[None]:
    """Within the block each parameter's ``type()`` answers its CUDA tensor type name (CPU machines only)."""
    for param in params:
        name = param.type()
        param.type = functools.partial(lambda n: n, name.replace("torch.", "torch.cuda.", 1))  # type: ignore[method-assign]
    try:
        yield
    finally:
        for param in params:
            del param.type


def _patch_float16_optimizer() -> None:
    import megatron.core.optimizer as optimizer_package

    base = _state["originals"].setdefault(
        "Float16OptimizerWithFloat16Params", optimizer_package.Float16OptimizerWithFloat16Params
    )

    class CpuFloat16OptimizerWithFloat16Params(base):  # type: ignore[misc, valid-type]
        """``Float16OptimizerWithFloat16Params`` accepting CPU parameters (fp32 main copies of bf16/fp16 ones)."""

        def __init__(self, optimizer: Any, *args: Any) -> None:
            params = [p for g in optimizer.param_groups for p in g["params"]] if optimizer else []
            with _cuda_type_names(params):
                super().__init__(optimizer, *args)

    optimizer_package.Float16OptimizerWithFloat16Params = CpuFloat16OptimizerWithFloat16Params


# ------------------------------------------------------------------------------ patch 10: the distributed optimizer


def _patch_distributed_optimizer() -> None:
    import megatron.core.optimizer as optimizer_package

    base = _state["originals"].setdefault("DistributedOptimizer", optimizer_package.DistributedOptimizer)

    class CpuDistributedOptimizer(base):  # type: ignore[misc, valid-type]
        """``DistributedOptimizer`` accepting CPU parameters (it shards fp32 ones and fp32 copies of bf16/fp16)."""

        def __init__(self, optimizer: Any, *args: Any, **kwargs: Any) -> None:
            params = [p for g in optimizer.param_groups for p in g["params"]] if optimizer else []
            with _cuda_type_names(params):
                super().__init__(optimizer, *args, **kwargs)

    optimizer_package.DistributedOptimizer = CpuDistributedOptimizer


# --------------------------------------------------------- patch 11: the distributed optimizer over torch's AdamW


def apply_torch_adam_patches() -> bool:
    """Patch the distributed optimizer's state restore for torch's AdamW, when megatron falls back to it (once).

    Returns:
        ``True`` if the patch is in effect after the call, ``False`` if apex or TransformerEngine provide the Adam
        megatron uses (their fused Adam keeps no per-parameter ``step``).

    Raises:
        MegatronVersionError: if the installed megatron-core is not a supported version.
    """
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        return False
    if "DistributedOptimizer.load_state_dict" in _state["originals"]:
        return True
    check_megatron_version()
    cls = distrib_optimizer.DistributedOptimizer
    original_load = _state["originals"].setdefault("DistributedOptimizer.load_state_dict", cls.load_state_dict)
    _state["originals"].setdefault("DistributedOptimizer._set_state", cls._set_main_param_and_optimizer_states)

    @functools.wraps(original_load)
    def load_state_dict(self: Any, state_dict: Any) -> None:
        original_load(self, state_dict)
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] = state["step"].clone()  # one counter per parameter, as torch's AdamW keeps them

    def set_main_param_and_optimizer_states(self: Any, model_param: Any, tensors: dict[str, Any]) -> None:
        """``_set_main_param_and_optimizer_states`` (0.16.1) copying the keys the checkpoint has (not ``step``)."""
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            _state["originals"]["DistributedOptimizer._set_state"](self, model_param, tensors)
            return
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        destination = {"param": main_param, **self.optimizer.state[main_param]}
        for key, tensor in tensors.items():
            destination[key].copy_(tensor)

    cls.load_state_dict = load_state_dict
    cls._set_main_param_and_optimizer_states = set_main_param_and_optimizer_states
    return True
