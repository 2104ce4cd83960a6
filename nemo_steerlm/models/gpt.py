"""A megatron ``GPTModel`` whose rotary embedding follows ``position_ids`` (sequence packing).

Megatron-core's ``GPTModel`` builds RoPE from ``0..s-1`` and ignores ``position_ids`` outside its THD packed format
(which needs TransformerEngine). Packed SteerLM sequences restart positions at every conversation, so this subclass
indexes the rotary table with ``position_ids`` (shape ``[s, b, 1, d]``, broadcast over heads). Inference with a KV
cache keeps megatron's own path.
"""

from __future__ import annotations

from typing import Any

from megatron.core.models.gpt import GPTModel
from torch import Tensor


class PositionAwareGPTModel(GPTModel):
    """``GPTModel`` with per-token RoPE positions."""

    def _preprocess(self, input_ids: Tensor, position_ids: Tensor, *args: Any, **kwargs: Any) -> tuple:
        out = super()._preprocess(input_ids, position_ids, *args, **kwargs)
        inference = kwargs.get("inference_context") is not None
        if self.position_embedding_type != "rope" or position_ids is None or inference or out[1] is None:
            return out
        table = self.rotary_pos_emb(int(position_ids.max()) + 1)  # [S, 1, 1, d]
        per_token = table[:, 0, 0, :][position_ids.t()].unsqueeze(2)  # [s, b, 1, d]
        return (out[0], per_token, *out[2:])
