"""The SteerLM SFT model: a megatron causal LM trained on attribute-conditioned conversations.

Loss: token cross-entropy on each assistant response and the turn marker after it (system text, user turns, the
assistant header and the attribute label are masked), averaged per trained token over the global batch
(megatron's per-token loss, so every layout computes the same loss). Optional sequence packing.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from nemo_steerlm.data.datasets import PackedSFTDataset, SFTDataset, SFTSample, collate_sft
from nemo_steerlm.data.formats import read_sft_jsonl
from nemo_steerlm.data.tokenization import encode_sft
from nemo_steerlm.megatron import parallel
from nemo_steerlm.megatron.attention import attention_inputs
from nemo_steerlm.megatron.step import run_forward_collect
from nemo_steerlm.models.base import MegatronGPTBase
from nemo_steerlm.models.gpt import PositionAwareGPTModel


class SteerLMSFTModel(MegatronGPTBase):
    """Attribute-conditioned SFT model (NeMo ``ModelPT``)."""

    model_kind = "sft"

    def network_class(self) -> type:
        """A GPT whose RoPE follows ``position_ids`` (packing restarts them per conversation)."""
        return PositionAwareGPTModel

    def forward_step(self, data_iterator: Any, model: torch.nn.Module) -> tuple[Any, Any]:
        """Runs one micro-batch; the loss is the masked token cross-entropy sum and the trained-token count."""
        mb = parallel.to_device(next(data_iterator))
        attention = attention_inputs(model, mb.get("document_ids"))  # packed rows: per-token conversation ids
        output = model(mb["tokens"], mb["position_ids"], labels=mb["labels"], **attention)
        mask = mb["loss_mask"]

        def loss_func(out: torch.Tensor, non_loss_data: bool = False) -> Any:
            per_token = out.float() * mask.to(out.device)
            if non_loss_data:
                return {"nll": per_token.sum(dim=1).detach().cpu(), "tokens": mask.sum(dim=1).cpu()}
            total, count = per_token.sum(), mask.sum()
            return total, count.to(torch.int), {"loss": torch.stack([total.detach(), count.to(total.device)])}

        return output, loss_func

    # --- data ----------------------------------------------------------------------------------------------------
    def sft_dataset(self, path: str) -> SFTDataset:
        """Reads, renders and tokenises an SFT JSONL file."""
        return self._tokenised(read_sft_jsonl(path, self.schema))

    def _tokenised(self, conversations: list[Any]) -> SFTDataset:
        policy = self.prompt_policy
        return SFTDataset(conversations, self.tokenizer, policy.seq_length, policy.max_context_tokens)

    def _loader(self, dataset: Any, train: bool) -> DataLoader:
        return self.make_loader(dataset, train, partial(collate_sft, pad_id=int(self.tokenizer.pad_token_id)))

    def _maybe_packed(self, dataset: SFTDataset) -> Dataset:
        return PackedSFTDataset(dataset, self._cfg.seq_length) if self._cfg.data.packing else dataset

    def train_dataloader(self) -> DataLoader:
        """Training batches from ``model.data.train`` (packed when ``model.data.packing``)."""
        conversations = read_sft_jsonl(self._cfg.data.train, self.schema)
        self.record_labelled_attributes(
            name
            for conv in conversations
            for turn in conv.turns
            if turn.label
            for name in self.schema.parse_label(turn.label)
        )
        self.train_set = self._tokenised(conversations)
        return self._loader(self._maybe_packed(self.train_set), train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches from ``model.data.validation`` (never packed; none when it is null)."""
        if self._cfg.data.validation is None:
            return []
        self.val_set = self.sft_dataset(self._cfg.data.validation)
        return self._loader(self.val_set, train=False) if len(self.val_set) else []

    # --- validation: token-weighted loss -----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        """Starts accumulating summed NLL and token counts."""
        self._val_nll: list[tuple[float, float]] = []

    def sequence_nll(
        self, batch: dict[str, torch.Tensor], micro_batch_size: int | None = None
    ) -> list[tuple[float, float]] | None:
        """Per-sequence ``(summed NLL, trained tokens)`` of a batch (last pipeline stage; ``None`` elsewhere).

        Forward passes of ``micro_batch_size`` sequences (default: the training micro-batch size).
        """
        size = micro_batch_size or self._cfg.micro_batch_size
        n = batch["tokens"].shape[0]
        out: list[tuple[float, float]] = []
        for start in range(0, n, size):
            micro = [{k: v[start : start + size] for k, v in batch.items()}]
            got = run_forward_collect(
                self.forward_step, self.chunks(), micro, int(batch["tokens"].shape[1]), micro[0]["tokens"].shape[0]
            )
            if not got:
                return None
            out.extend(zip(got[0]["nll"].tolist(), got[0]["tokens"].tolist(), strict=True))
        return out

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Scores a validation batch (this rank's share)."""
        if batch["tokens"].shape[0] == 0:
            return
        got = self.sequence_nll(batch)
        if got is not None:
            self._val_nll.extend(got)

    def on_validation_epoch_end(self) -> None:
        """Logs the token-weighted validation loss over all data-parallel ranks."""
        pairs = parallel.gather_data_parallel(self._val_nll)
        nll, tokens = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        value = self.broadcast_from_last_stage(nll / tokens if tokens else 0.0)
        self.log("val_loss", float(value), prog_bar=True, rank_zero_only=True, batch_size=1)

    # --- scoring for evaluation ------------------------------------------------------------------------------------
    def score_samples(self, samples: list[SFTSample], batch_size: int = 16) -> list[tuple[float, float]]:
        """``(summed NLL, trained tokens)`` of each sample, in order, on every rank.

        Length-sorted batches of ``batch_size``, each one forward pass (no activations are kept for backward, so the
        training micro-batch size does not bound it; fewer, larger passes matter where kernel launches dominate).
        """
        pad = int(self.tokenizer.pad_token_id)
        order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
        out: list[tuple[float, float] | None] = [None] * len(samples)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate_sft([samples[i] for i in idx], pad)
            got = self.broadcast_from_last_stage(self.sequence_nll(batch, micro_batch_size=len(idx)))
            for i, pair in zip(idx, got, strict=True):
                out[i] = (float(pair[0]), float(pair[1]))
        return [p for p in out if p is not None]

    def score_conversations(self, conversations: list[Any], batch_size: int = 16) -> list[float]:
        """Summed NLL of the trained tokens (the assistant responses) of each conversation, on every rank.

        Tokenised and cut exactly as in training (the prompt policy).

        Raises:
            ValueError: a conversation has no trained token left.
        """
        dataset = self._tokenised(conversations)
        if dataset.num_skipped:
            raise ValueError(f"{dataset.num_skipped} of {len(conversations)} conversations have no trained token")
        return [nll for nll, _ in self.score_samples(dataset.samples, batch_size)]

    def score_continuations(self, contexts: list[str], continuations: list[str]) -> list[float]:
        """Sum of token log-probabilities of each continuation given its context (text tokenised whole).

        The context is cut by the prompt policy, as training cuts the context before a response.
        """
        policy, samples = self.prompt_policy, []
        for context, continuation in zip(contexts, continuations, strict=True):
            enc = self.tokenizer(context + continuation, add_special_tokens=False, return_offsets_mapping=True)
            mask = [start >= len(context) for start, _ in enc["offset_mapping"]]
            kept = encode_sft(list(enc["input_ids"]), mask, policy.seq_length, policy.max_context_tokens)
            samples.append(SFTSample(kept.input_ids, list(kept.loss_mask or [])))
        return [-nll for nll, _ in self.score_samples(samples)]
