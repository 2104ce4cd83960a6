"""A megatron ``GPTModel`` whose rotary embedding follows ``position_ids`` (sequence packing).

Megatron-core's ``GPTModel`` builds RoPE from ``0..s-1`` and ignores ``position_ids`` outside its THD packed format
(which needs TransformerEngine). Packed SteerLM sequences restart positions at every conversation, so this subclass
indexes the rotary table with ``position_ids`` (shape ``[s, b, 1, d]``, broadcast over heads). Inference with a KV
cache keeps megatron's own path unless the inference context carries per-slot ``rope_positions`` (left-padded
batched prefill in :mod:`nemo_steerlm.models.generation`).
"""

from __future__ import annotations

from typing import Any

from megatron.core.models.gpt import GPTModel
from torch import Tensor


class PositionAwareGPTModel(GPTModel):
    """``GPTModel`` with per-token RoPE positions."""

    def _preprocess(self, input_ids: Tensor, position_ids: Tensor, *args: Any, **kwargs: Any) -> tuple:
        out = super()._preprocess(input_ids, position_ids, *args, **kwargs)
        context = kwargs.get("inference_context")
        if self.position_embedding_type != "rope" or position_ids is None or out[1] is None:
            return out
        if context is not None:
            return self._inference_rope(out, context)
        table = self.rotary_pos_emb(int(position_ids.max()) + 1)  # [S, 1, 1, d]
        per_token = table[:, 0, 0, :][position_ids.t()].unsqueeze(2)  # [s, b, 1, d]
        return (out[0], per_token, *out[2:])

    def _inference_rope(self, out: tuple, context: Any) -> tuple:
        """With a KV cache: per-row positions of every cache slot when the context has them (left-padded rows).

        Megatron slices the table by cache slot (``[offset:offset + s]`` for queries, ``[:offset + s]`` for keys), so
        a ``[slots, b, 1, d]`` table gives each row its own positions. Without ``rope_positions`` megatron's own path
        (slot = position) is kept. The table is built once per context.
        """
        positions = getattr(context, "rope_positions", None)
        if positions is None:
            return out
        table = getattr(context, "rope_table", None)
        if table is None:
            full = self.rotary_pos_emb(int(positions.max()) + 1)  # [S, 1, 1, d]
            table = full[:, 0, 0, :][positions.t()].unsqueeze(2)  # [slots, b, 1, d]
            context.rope_table = table
        return (out[0], table, *out[2:])
