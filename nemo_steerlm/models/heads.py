"""Task heads on megatron-core's GPTModel: the attribute-regression read-out and its masked MSE loss.

:class:`RegressionGPTModel` is a ``GPTModel`` whose post-processing reads the final-normed hidden state at each
sequence's last real token and maps it to one score per attribute with a small linear head. The head is replicated
on every tensor-parallel rank of the last pipeline stage (it is tiny, and a replicated head keeps gradients identical
across TP ranks without extra communication).
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from torch import Tensor

from nemo_steerlm.attributes import MASK_VALUE


class RegressionGPTModel(GPTModel):
    """GPT trunk + a linear regression head read at each sequence's last real token.

    Args:
        *args: ``GPTModel`` positional arguments.
        num_attributes: outputs of the head (one per attribute in the schema).
        **kwargs: ``GPTModel`` keyword arguments.

    ``forward(input_ids, position_ids, attention_mask, last_token_index=...)`` returns ``[batch, num_attributes]``
    on the last pipeline stage (fp32) and the hidden states ``[seq, batch, hidden]`` on earlier stages.
    ``last_token_index`` is a ``[batch]`` integer tensor of positions in the (unsharded) sequence.
    """

    def __init__(self, *args: Any, num_attributes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_attributes = num_attributes
        self._last_token_index: Tensor | None = None
        if self.post_process:
            self.regression_head = torch.nn.Linear(
                self.config.hidden_size, num_attributes, bias=False, dtype=self.config.params_dtype
            )
            with torch.no_grad():
                self.config.init_method(self.regression_head.weight)
            if torch.cuda.is_available():
                self.regression_head.cuda(torch.cuda.current_device())

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor | None,
        last_token_index: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Run the trunk and, on the last stage, the regression read-out.

        Args:
            input_ids: ``[batch, seq]`` token ids (used on the first stage).
            position_ids: ``[batch, seq]`` positions.
            attention_mask: ``None`` for the causal mask, or megatron's boolean mask.
            last_token_index: ``[batch]`` position of each sequence's last real token (required on the last stage).
            **kwargs: further ``GPTModel.forward`` arguments.

        Returns:
            ``[batch, num_attributes]`` scores on the last stage, hidden states elsewhere.
        """
        if self.post_process and last_token_index is None:
            raise ValueError("RegressionGPTModel.forward needs `last_token_index` ([batch]) on the last stage")
        self._last_token_index = last_token_index
        try:
            return super().forward(input_ids, position_ids, attention_mask, **kwargs)
        finally:
            self._last_token_index = None

    def _postprocess(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Read the last-token hidden state of each sequence and apply the head (final norm is already applied).

        Args:
            hidden_states: ``[seq(/TP with sequence parallel), batch, hidden]`` decoder output.
            *args: the remaining ``GPTModel._postprocess`` arguments (unused).
            **kwargs: the remaining ``GPTModel._postprocess`` arguments (unused).

        Returns:
            ``[batch, num_attributes]`` fp32 scores, or ``hidden_states`` on a stage without post-processing.
        """
        if not self.post_process:
            return hidden_states
        if self.config.sequence_parallel:
            # Everything after the gather is replicated on the TP ranks, so the backward only splits the gradient
            # (tensor_parallel_output_grad=False) instead of summing TP identical copies.
            hidden_states = gather_from_sequence_parallel_region(
                hidden_states, tensor_parallel_output_grad=False, group=self.pg_collection.tp
            )
        index = self._last_token_index.to(device=hidden_states.device, dtype=torch.long)
        batch = torch.arange(hidden_states.shape[1], device=hidden_states.device)
        features = hidden_states[index, batch]  # [batch, hidden]
        return self.regression_head(features).float()


def masked_squared_error(pred: Tensor, target: Tensor, mask_value: float = MASK_VALUE) -> tuple[Tensor, Tensor]:
    """Sum of squared errors over the entries whose target is not ``mask_value``, and their count.

    Args:
        pred: predictions, any shape.
        target: targets of the same shape; ``mask_value`` marks a missing attribute.
        mask_value: the missing-attribute marker.

    Returns:
        ``(sum of squared errors, number of unmasked entries)``: an fp32 scalar and an int64 scalar (megatron's
        per-token loss normalisation accumulates the count in an integer tensor).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    mask = target != mask_value
    diff = torch.where(mask, pred.float() - target.float(), torch.zeros((), dtype=torch.float32, device=pred.device))
    return (diff * diff).sum(), mask.sum()


def masked_mse_loss(pred: Tensor, target: Tensor, mask_value: float = MASK_VALUE) -> Tensor:
    """Mean squared error over the unmasked entries; ``0`` (with zero, finite gradients) when all are masked.

    Args:
        pred: predictions, any shape.
        target: targets of the same shape; ``mask_value`` marks a missing attribute.
        mask_value: the missing-attribute marker.

    Returns:
        The fp32 scalar loss.
    """
    total, count = masked_squared_error(pred, target, mask_value)
    return total / count.clamp(min=1).to(total.dtype)
