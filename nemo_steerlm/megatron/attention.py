"""Core attention on ``torch.nn.functional.scaled_dot_product_attention`` for megatron's local layer spec.

Without TransformerEngine, megatron-core's local spec computes attention with ``DotProductAttention``: it
materialises the ``[b, heads, s, s]`` scores and probabilities of every layer and keeps them for backward. At
SmolLM2's 30 layers and 2,048 tokens that is most of the activation memory (a CPU step of 4 sequences ran out of
24 GB). :class:`SDPAttention` has the same constructor and ``forward`` signature and computes the same function
with PyTorch's fused kernels (flash or memory-efficient on CUDA, the flash kernel on CPU), which keep no ``s × s``
matrix. :func:`local_spec_with_attention` swaps it into the local spec; ``model.core_attention=local`` keeps
megatron's own module.

Packed rows (several conversations per row) are described by per-token document ids ``[b, s]`` instead of a dense
``[b, 1, s, s]`` mask: :func:`attention_inputs` wraps them in a :class:`DocumentMask` (passed to megatron as
``packed_seq_params``, ``qkv_format="sbhd"``, which megatron hands through to the core attention untouched) for
:class:`SDPAttention`, and builds megatron's dense mask only for ``core_attention=local``. With a document mask
:class:`SDPAttention` picks its kernel itself: FlexAttention with a block-sparse ``BlockMask`` (causal within a
document, nothing across) on CUDA, where only the blocks that hold allowed pairs are computed and no ``s × s`` tensor
exists; elsewhere (torch 2.13 has no FlexAttention backward on CPU, and its CPU forward needs ``torch.compile`` to be
fast), or with attention dropout (FlexAttention has none), the boolean mask is built from the ids once per
micro-batch inside the attention and SDPA runs as before. Both compute the same function (tests compare them).

Semantics kept from ``DotProductAttention``: inputs ``query [sq, b, heads, d]``, ``key``/``value
[sk, b, groups, d]`` (grouped-query keys shared by their heads inside the kernel, SDPA's ``enable_gqa``: no copy
per head, which matters for a KV cache read every decode step), output ``[sq, b, heads * d]``; ``attention_mask`` is
boolean with ``True`` = masked, broadcastable to ``[b, 1, sq, sk]``; without a mask the layer's causal type
applies (``sq == sk``), and a single query (a KV-cache decode step) attends to every cached key. The softmax scale
is ``softmax_scale`` or ``1/sqrt(d)`` (megatron's query-key layer scaling multiplies it back and cancels).
"""

from __future__ import annotations

import contextlib
import copy
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide, unwrap_model

from nemo_steerlm.megatron.config import ConfigError

CORE_ATTENTION = ("sdpa", "local")
DocumentBackend = Literal["auto", "flex", "dense"]


@dataclass
class DocumentMask(PackedSeqParams):
    """Packed rows as per-token document ids: causal attention within a document, none across documents.

    Megatron passes ``packed_seq_params`` unchanged from ``GPTModel.forward`` to every layer's core attention (the
    ``sbhd`` format leaves RoPE and the projections alone), so one object serves all layers of a micro-batch and
    caches what it builds (the block mask or the dense mask) for them.

    Args:
        document_ids: ``[b, s]`` integer ids; tokens of one row with equal ids form a document (padding may share
            one id: it then attends causally to padding only, as with the dense mask).
        backend: ``auto`` (FlexAttention on CUDA without dropout, the dense mask otherwise), ``flex`` or ``dense``.
    """

    document_ids: torch.Tensor | None = None
    backend: DocumentBackend = "auto"
    qkv_format: str = "sbhd"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # megatron sizes the rotary table from these when packed_seq_params is given: the full row length
        if self.document_ids is not None:
            self.max_seqlen_q = self.max_seqlen_kv = int(self.document_ids.shape[1])

    def allowed(self) -> torch.Tensor:
        """SDPA's boolean ``[b, 1, s, s]`` mask ("may attend"), built once."""
        if "allowed" not in self._cache:
            ids = self.document_ids
            s = ids.shape[1]
            causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()
            self._cache["allowed"] = ((ids.unsqueeze(2) == ids.unsqueeze(1)) & causal).unsqueeze(1)
        return self._cache["allowed"]

    def block_mask(self) -> Any:
        """FlexAttention's ``BlockMask`` for the ids (heads broadcast), built once."""
        if "block" not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            ids = self.document_ids

            def document_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
                return (ids[b, q] == ids[b, kv]) & (q >= kv)

            b, s = ids.shape
            self._cache["block"] = create_block_mask(document_causal, b, None, s, s, device=ids.device)
        return self._cache["block"]


def attention_inputs(
    model: torch.nn.Module, document_ids: torch.Tensor | None, backend: DocumentBackend = "auto"
) -> dict[str, Any]:
    """Keyword arguments of ``GPTModel.forward`` for a micro-batch: its mask, as the model's core attention takes it.

    Args:
        model: the (possibly DDP-wrapped) GPT stage.
        document_ids: ``[b, s]`` document ids of packed rows, or ``None`` for plain causal rows.
        backend: the :class:`DocumentMask` backend (for checks; ``auto`` in training).

    Returns:
        ``{"attention_mask": None}`` for causal rows; ``{"attention_mask": None, "packed_seq_params": DocumentMask}``
        for :class:`SDPAttention`; megatron's dense boolean mask (``True`` = masked) for megatron's own attention.
    """
    if document_ids is None:
        return {"attention_mask": None}
    mask = DocumentMask(document_ids=document_ids, backend=backend)
    layers = unwrap_model(model).decoder.layers
    if len(layers) and isinstance(layers[0].self_attention.core_attention, SDPAttention):
        return {"attention_mask": None, "packed_seq_params": mask}
    return {"attention_mask": ~mask.allowed()}


_FLEX: Any = None


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask, scale: float) -> Any:
    """FlexAttention over ``[b, heads, s, d]`` with the document block mask (compiled on CUDA, eager elsewhere)."""
    global _FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:
        if _FLEX is None:
            _FLEX = torch.compile(flex_attention)
        kernel = _FLEX
    else:
        kernel = flex_attention  # eager: correct but slow, and forward only (torch 2.13); used by the CPU tests
    return kernel(q, k, v, block_mask=mask.block_mask(), scale=scale, enable_gqa=k.shape[1] != q.shape[1])


class SDPAttention(MegatronModule):
    """Megatron core attention computed by ``scaled_dot_product_attention`` (see the module docstring).

    Args:
        config: the transformer config; context parallelism, sliding windows and non-vanilla softmax are refused.
        layer_number: the layer (unused: the scale does not depend on it).
        attn_mask_type: the layer's mask type (``causal`` for GPT self-attention).
        attention_type: ``"self"`` (unused, as in megatron).
        attention_dropout: dropout on the attention probabilities; defaults to ``config.attention_dropout``.
        softmax_scale: defaults to ``1/sqrt(head width)``.
        cp_comm_type: unused (no context parallelism).
        pg_collection: process groups; its ``tp`` group sizes the local heads.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__(config=config)
        unsupported = {
            "context_parallel_size": config.context_parallel_size != 1,
            "window_size": config.window_size is not None,
            "softmax_type": config.softmax_type != "vanilla",
        }
        if any(unsupported.values()):
            names = ", ".join(k for k, bad in unsupported.items() if bad)
            raise ConfigError(f"core_attention=sdpa does not support {names}; set model.core_attention=local")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups or config.num_attention_heads, tp)
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.attn_mask_type = attn_mask_type
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        """Attention output ``[sq, b, heads * d]`` for ``query [sq, b, heads, d]`` and ``key``/``value``."""
        documents = packed_seq_params if isinstance(packed_seq_params, DocumentMask) else None
        if attention_bias is not None or (packed_seq_params is not None and documents is None):
            raise ValueError(
                "core_attention=sdpa takes a boolean attention_mask or a DocumentMask, not attention_bias or THD "
                "packed_seq_params"
            )
        sq, sk = query.shape[0], key.shape[0]
        dropout = self.dropout if self.training else 0.0
        if documents is not None and self._use_flex(documents, query, dropout):
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads or groups, s, d]
            out = _flex_attention(q, k, v, documents, self.scale)
            return out.permute(2, 0, 1, 3).reshape(sq, out.shape[0], -1)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads or groups, s, d]
        if documents is not None:
            mask, causal = documents.allowed(), False
        else:
            mask, causal = self._mask(attention_mask, attn_mask_type or self.attn_mask_type, sq, sk)
        # megatron forks the model-parallel RNG for attention dropout unless activations are sequence-parallel
        fork = (
            contextlib.nullcontext() if self.config.sequence_parallel else tensor_parallel.get_cuda_rng_tracker().fork()
        )
        with fork:
            # grouped-query keys are shared by their heads inside the kernel (no per-head copies of the KV cache)
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=causal,
                scale=self.scale,
                enable_gqa=self.heads != self.groups,
            )
        return out.permute(2, 0, 1, 3).reshape(sq, out.shape[0], -1)

    @staticmethod
    def _use_flex(documents: DocumentMask, query: torch.Tensor, dropout: float) -> bool:
        """Whether a document mask runs on FlexAttention (see the module docstring)."""
        if documents.backend == "auto":
            return query.is_cuda and dropout == 0.0
        if documents.backend == "flex" and dropout > 0.0:
            raise ValueError("FlexAttention has no attention dropout: use backend='dense' or attention_dropout=0")
        return documents.backend == "flex"

    @staticmethod
    def _mask(
        attention_mask: torch.Tensor | None, mask_type: AttnMaskType, sq: int, sk: int
    ) -> tuple[torch.Tensor | None, bool]:
        """``(attn_mask, is_causal)`` for SDPA (see :func:`_allowed` for an explicit mask)."""
        if attention_mask is not None:
            return _allowed(attention_mask, sq, sk), False
        if mask_type == AttnMaskType.causal and sq > 1:
            if sq != sk:
                raise ValueError(f"a causal mask needs as many queries as keys (got {sq} and {sk})")
            return None, True
        return None, False


_ALLOWED: tuple[weakref.ref, torch.Tensor] | None = None


def _allowed(attention_mask: torch.Tensor, sq: int, sk: int) -> torch.Tensor:
    """SDPA's boolean mask ("may attend") for megatron's (``True`` = masked), made once per mask tensor.

    Every layer receives the same mask tensor; converting it in each of them would keep one copy per layer for
    backward, so the last conversion is reused while its source is alive. A row that masks every key attends to its
    own position instead (SDPA returns NaN there, megatron a uniform average; neither reaches a loss or a token).
    """
    global _ALLOWED
    if _ALLOWED is not None and _ALLOWED[0]() is attention_mask:
        return _ALLOWED[1]
    allowed = ~attention_mask.bool()
    if sq == sk:
        allowed = allowed | torch.eye(sq, dtype=torch.bool, device=allowed.device)
    _ALLOWED = (weakref.ref(attention_mask), allowed)
    return allowed


def local_spec_with_attention(normalization: str, core_attention: str = "sdpa") -> ModuleSpec:
    """Megatron's local GPT layer spec with the chosen core attention (``sdpa`` or megatron's ``local``).

    Raises:
        ConfigError: for another ``core_attention`` value.
    """
    if core_attention not in CORE_ATTENTION:
        raise ConfigError(f"model.core_attention={core_attention}: use one of {', '.join(CORE_ATTENTION)}")
    spec = get_gpt_layer_local_spec(normalization=normalization)
    if core_attention == "local":
        return spec
    spec = copy.deepcopy(spec)
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec
