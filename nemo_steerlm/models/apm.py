"""The attribute prediction model (APM): a megatron GPT with a regression head over the schema's attributes.

It reads a conversation rendered up to ``<extra_id_2>`` and predicts the attribute scores of the last assistant
turn from the hidden state at that last token. Loss: squared error over the attributes present (``-100`` =
missing), averaged per labelled entry over the whole global batch (megatron's per-token loss), so every layout
computes the same loss.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from megatron.core import parallel_state
from torch.utils.data import DataLoader

from nemo_steerlm.attributes import MASK_VALUE
from nemo_steerlm.data.datasets import RegressionDataset, collate_regression
from nemo_steerlm.data.formats import read_regression_jsonl
from nemo_steerlm.megatron import parallel
from nemo_steerlm.megatron.step import run_forward_collect
from nemo_steerlm.models.base import MegatronGPTBase
from nemo_steerlm.models.heads import RegressionGPTModel, masked_squared_error


class AttributePredictionModel(MegatronGPTBase):
    """SteerLM's attribute prediction model (NeMo ``ModelPT``)."""

    model_kind = "apm"

    def network_class(self) -> type:
        """A GPT with the regression read-out."""
        return RegressionGPTModel

    def network_kwargs(self) -> dict[str, Any]:
        """One output per attribute of the schema."""
        return {"num_attributes": len(self.schema)}

    def forward_step(self, data_iterator: Any, model: torch.nn.Module) -> tuple[Any, Any]:
        """Runs one micro-batch; the loss is the summed squared error and the number of labelled entries."""
        mb = parallel.to_device(next(data_iterator))
        output = model(mb["tokens"], mb["position_ids"], None, last_token_index=mb["last_index"])
        labels = mb["labels"]

        def loss_func(out: torch.Tensor, non_loss_data: bool = False) -> Any:
            if non_loss_data:
                return out.detach().float().cpu()
            sse, count = masked_squared_error(out, labels.to(out.device))
            return sse, count.to(torch.int), {"loss": torch.stack([sse.detach(), count])}

        return output, loss_func

    # --- data ----------------------------------------------------------------------------------------------------
    def regression_dataset(self, path: str) -> RegressionDataset:
        """Reads and tokenises a regression JSONL file (read-out kept, long contexts cut from the left)."""
        examples = read_regression_jsonl(path, self.schema)
        records = [(e.text, e.label) for e in examples]
        policy = self.prompt_policy
        return RegressionDataset(records, self.tokenizer, policy.seq_length, policy.max_context_tokens)

    def _loader(self, dataset: Any, train: bool) -> DataLoader:
        return self.make_loader(dataset, train, partial(collate_regression, pad_id=int(self.tokenizer.pad_token_id)))

    def train_dataloader(self) -> DataLoader:
        """Training batches from ``model.data.train``."""
        self.train_set = self.regression_dataset(self._cfg.data.train)
        self.record_labelled_attributes(
            name
            for sample in self.train_set.samples
            for name, value in zip(self.schema.names, sample.labels, strict=True)
            if value != MASK_VALUE
        )
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches from ``model.data.validation`` (none when it is null)."""
        if self._cfg.data.validation is None:
            return []
        self.val_set = self.regression_dataset(self._cfg.data.validation)
        return self._loader(self.val_set, train=False) if len(self.val_set) else []

    # --- prediction and validation -------------------------------------------------------------------------------
    def predict_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Raw scores ``[n, A]`` of one batch (on the last pipeline stage; ``None`` on other stages)."""
        size = self._cfg.micro_batch_size
        micro = [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, batch["tokens"].shape[0], size)]
        if len(micro) > 1 and micro[-1]["tokens"].shape[0] != size:
            # pipeline buffers need one micro-batch size: run the ragged tail on its own
            head = self.predict_batch({k: v[: (len(micro) - 1) * size] for k, v in batch.items()})
            tail = self.predict_batch(micro[-1])
            return None if head is None else torch.cat([head, tail])
        outs = run_forward_collect(
            self.forward_step, self.chunks(), micro, int(batch["tokens"].shape[1]), int(micro[0]["tokens"].shape[0])
        )
        return torch.cat(outs) if outs else None

    def predict_dataset(
        self, dataset: RegressionDataset, batch_size: int | None = None, progress: Callable[[int], None] | None = None
    ) -> np.ndarray | None:
        """Raw scores ``[len(dataset), A]`` in dataset order, split over data-parallel ranks and gathered back.

        Batches are formed from length-sorted samples (less padding) and the results put back in order. Returns the
        array on the last pipeline stage of every data-parallel replica and ``None`` on the other stages.
        ``progress`` is called after each batch with the number of samples this rank just scored.
        """
        rank, size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
        order = sorted(range(len(dataset)), key=lambda i: len(dataset[i].input_ids))
        mine = order[rank::size]
        step = batch_size or self._cfg.micro_batch_size * 4
        pad = int(self.tokenizer.pad_token_id)
        results: list[tuple[int, np.ndarray]] = []
        for start in range(0, len(mine), step):
            idx = mine[start : start + step]
            preds = self.predict_batch(collate_regression([dataset[i] for i in idx], pad))
            if preds is not None:
                results.extend(zip(idx, preds.numpy(), strict=True))
            if progress is not None:
                progress(len(idx))
        gathered = parallel.gather_data_parallel(results)
        if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            return None
        out = np.zeros((len(dataset), len(self.schema)), dtype=np.float32)
        for i, row in gathered:
            out[i] = row
        return out

    def predict_texts(
        self, texts: list[str], batch_size: int | None = None, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, int]:
        """Raw scores ``[N, A]`` of regression texts (ending at ``<extra_id_2>``), on every rank.

        Returns the scores and how many texts were cut from the left to fit (the read-out always survives).
        ``progress`` as in :meth:`predict_dataset`.
        """
        records = [(text, [MASK_VALUE] * len(self.schema)) for text in texts]
        policy = self.prompt_policy  # the same cut as in training
        dataset = RegressionDataset(records, self.tokenizer, policy.seq_length, policy.max_context_tokens)
        preds = self.broadcast_from_last_stage(self.predict_dataset(dataset, batch_size, progress))
        return preds, dataset.num_truncated

    def on_validation_epoch_start(self) -> None:
        """Starts collecting predictions."""
        self._val_preds: list[np.ndarray] = []
        self._val_labels: list[np.ndarray] = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Predicts a validation batch (this rank's share)."""
        if batch["tokens"].shape[0] == 0:
            return
        preds = self.predict_batch(batch)
        if preds is not None:
            self._val_preds.extend(preds.numpy())
            self._val_labels.extend(batch["labels"].cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        """Gathers predictions over data-parallel ranks and logs the validation loss and per-attribute MAE."""
        preds = parallel.gather_data_parallel(self._val_preds)
        labels = parallel.gather_data_parallel(self._val_labels)
        stats = self.broadcast_from_last_stage(validation_stats(preds, labels, list(self.schema.names)))
        for name, value in stats.items():
            self.log(name, value, prog_bar=name == "val_loss", rank_zero_only=True, batch_size=1)


def validation_stats(preds: list[np.ndarray], labels: list[np.ndarray], names: list[str]) -> dict[str, float]:
    """Masked MSE over all labelled entries and the MAE of each attribute present."""
    if not preds:
        return {}
    p, y = np.stack(preds), np.stack(labels)
    mask = y != MASK_VALUE
    stats = {"val_loss": float(((p - y) ** 2)[mask].mean()) if mask.any() else 0.0}
    for j, name in enumerate(names):
        if mask[:, j].any():
            stats[f"val_mae_{name}"] = float(np.abs(p[mask[:, j], j] - y[mask[:, j], j]).mean())
    return stats
