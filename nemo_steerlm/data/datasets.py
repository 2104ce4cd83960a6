"""Torch datasets, collation and the data-parallel batch sampler for the attribute model and SFT.

Megatron batch semantics: one optimizer step consumes ``global_batch_size`` samples, split evenly over data-parallel
ranks; each rank splits its share into micro-batches of ``micro_batch_size``. Every model-parallel rank of one
data-parallel replica reads the same samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from nemo_steerlm.data.template import render_sft, tokenize_rendered
from nemo_steerlm.data.tokenization import Encoded, encode_regression, encode_sft


@dataclass(frozen=True)
class RegressionSample:
    """One tokenised regression sample."""

    input_ids: list[int]
    labels: list[float]


class RegressionDataset(Dataset):
    """Regression JSONL records (``text``, ``label``) tokenised with the read-out kept.

    Args:
        records: ``(text, label vector)`` pairs in schema order.
        tokenizer: a Hugging Face fast tokenizer.
        seq_length: the most tokens per sample.
        max_context_tokens: cap on the tokens before the final response (``0`` = none); HelpSteer prompts are long
            and the attribute model reads the response.
    """

    def __init__(
        self, records: Sequence[tuple[str, list[float]]], tokenizer: Any, seq_length: int, max_context_tokens: int
    ) -> None:
        self.samples: list[RegressionSample] = []
        self.num_truncated = 0
        for text, label in records:
            enc: Encoded = encode_regression(text, tokenizer, seq_length, max_context_tokens)
            self.num_truncated += int(enc.truncated)
            self.samples.append(RegressionSample(enc.input_ids, [float(v) for v in label]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> RegressionSample:
        return self.samples[index]


def collate_regression(samples: Sequence[RegressionSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads samples: ``tokens`` [b, s], ``position_ids`` [b, s], ``last_index`` [b], ``labels`` [b, A]."""
    length = max(len(s.input_ids) for s in samples)
    tokens = torch.full((len(samples), length), pad_id, dtype=torch.long)
    for i, s in enumerate(samples):
        tokens[i, : len(s.input_ids)] = torch.tensor(s.input_ids, dtype=torch.long)
    return {
        "tokens": tokens,
        "position_ids": torch.arange(length, dtype=torch.long).unsqueeze(0).expand(len(samples), -1).contiguous(),
        "last_index": torch.tensor([len(s.input_ids) - 1 for s in samples], dtype=torch.long),
        "labels": torch.tensor([s.labels for s in samples], dtype=torch.float32),
    }


class EpochShuffle(Sampler[int]):
    """Sample indices in a seeded order that changes every epoch.

    Lightning calls ``set_epoch`` on a loader's ``sampler`` and on its ``batch_sampler.sampler`` at the start of
    every epoch (also after a resume, with the restored epoch), never on the batch sampler itself: the order must live
    here for every epoch to see a new one.

    Args:
        num_samples: dataset size.
        shuffle: a new order every epoch (seeded with ``seed + epoch``); ``False`` = input order.
        seed: base seed.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int) -> None:
        super().__init__()
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's order."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=gen).tolist())


class MegatronBatchSampler(Sampler[list[int]]):
    """Yields, per optimizer step, this data-parallel rank's share of a global batch.

    The order comes from :attr:`sampler` (an :class:`EpochShuffle`), which Lightning moves to the next epoch.

    Args:
        num_samples: dataset size.
        global_batch_size: samples per optimizer step over all data-parallel ranks.
        dp_rank: this rank's data-parallel index.
        dp_size: data-parallel world size.
        shuffle: reshuffle every epoch (seeded with ``seed + epoch``).
        seed: base seed.
        drop_last: drop the incomplete last global batch (training: a different remainder each epoch); when False
            the last batch is shared out as evenly as possible (evaluation), and a rank may get an empty share.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        dp_rank: int,
        dp_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
    ) -> None:
        super().__init__()
        if global_batch_size % dp_size:
            raise ValueError(f"global batch {global_batch_size} is not divisible by data-parallel size {dp_size}")
        self.num_samples, self.global_batch_size = num_samples, global_batch_size
        self.dp_rank, self.dp_size, self.drop_last = dp_rank, dp_size, drop_last
        self.sampler = EpochShuffle(num_samples, shuffle, seed)
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's shuffle."""
        self.sampler.set_epoch(epoch)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Makes the next pass over ``epoch`` start after its first ``batches_done`` batches (once).

        A run resumed from a mid-epoch checkpoint then trains on exactly the batches an uninterrupted run would
        have: the rest of the interrupted epoch's order, none twice.
        """
        self._resume = (epoch, batches_done) if batches_done > 0 else None

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        first = 0
        if self._resume is not None and self._resume[0] == self.sampler.epoch:
            first, self._resume = self._resume[1], None
        for step in range(first, len(self)):
            batch = order[step * self.global_batch_size : (step + 1) * self.global_batch_size]
            share = -(-len(batch) // self.dp_size)
            yield batch[self.dp_rank * share : (self.dp_rank + 1) * share]


@dataclass(frozen=True)
class SFTSample:
    """One tokenised conversation: ``seq + 1`` ids and the loss mask of each id (shifted at collation)."""

    input_ids: list[int]
    loss_mask: list[bool]


class SFTDataset(Dataset):
    """SteerLM SFT conversations rendered with the template and tokenised whole.

    Args:
        conversations: parsed SFT JSONL records.
        tokenizer: a Hugging Face fast tokenizer.
        seq_length: input tokens per sequence (a sample keeps at most ``seq_length + 1`` ids).
        max_context_tokens: cap on the tokens before the first trained token (``0`` = none).
    """

    def __init__(self, conversations: Sequence[Any], tokenizer: Any, seq_length: int, max_context_tokens: int) -> None:
        self.samples: list[SFTSample] = []
        self.num_truncated = 0
        self.num_skipped = 0  # conversations with no trained token left (reported, never silently dropped)
        for conv in conversations:
            tok = tokenize_rendered(render_sft(conv), tokenizer)
            enc = encode_sft(tok.input_ids, tok.loss_mask, seq_length, max_context_tokens)
            self.num_truncated += int(enc.truncated)
            if len(enc.input_ids) < 2 or not any(enc.loss_mask[1:]):
                self.num_skipped += 1
                continue
            self.samples.append(SFTSample(enc.input_ids, list(enc.loss_mask or [])))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> SFTSample:
        return self.samples[index]


def pack_samples(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bins of sample indices whose input lengths (``len(ids) - 1``) sum to at most capacity.

    Deterministic: ties keep input order; bins are returned in the order they were opened.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        need = lengths[i]
        for b, free in enumerate(room):
            if need <= free:
                bins[b].append(i)
                room[b] -= need
                break
        else:
            bins.append([i])
            room.append(capacity - need)
    return bins


class PackedSFTDataset(Dataset):
    """Several conversations per sequence (first-fit decreasing); each item is the list of its samples."""

    def __init__(self, dataset: SFTDataset, seq_length: int) -> None:
        self.dataset = dataset
        self.bins = pack_samples([len(s.input_ids) - 1 for s in dataset.samples], seq_length)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> list[SFTSample]:
        return [self.dataset[i] for i in self.bins[index]]


def collate_sft(items: Sequence[SFTSample | list[SFTSample]], pad_id: int, pad_to: int | None = None) -> dict:
    """Right-pads (packed) samples into ``tokens``, ``labels``, ``loss_mask``, ``position_ids`` [b, s].

    A packed item (a list of samples) also produces ``document_ids`` [b, s]: the index of each token's conversation
    in its row (``-1`` for padding). Attention is causal within a conversation and nothing crosses them; positions
    restart at 0 per conversation. No dense ``[b, 1, s, s]`` mask is built here: the model's core attention turns
    the ids into the mask it needs (:func:`nemo_steerlm.megatron.attention.attention_inputs`). Unpacked batches get
    no ids (the model's causal mask), which is what a packed row of one conversation reduces to.
    """
    packed = any(isinstance(it, list) for it in items)
    rows = [it if isinstance(it, list) else [it] for it in items]
    length = max(sum(len(s.input_ids) - 1 for s in row) for row in rows)
    length = max(length, pad_to or 0)
    b = len(rows)
    tokens = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), pad_id, dtype=torch.long)
    loss = torch.zeros((b, length), dtype=torch.float32)
    positions = torch.zeros((b, length), dtype=torch.long)
    segments = torch.full((b, length), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for seg, s in enumerate(row):
            n = len(s.input_ids) - 1
            ids = torch.tensor(s.input_ids, dtype=torch.long)
            tokens[r, at : at + n], labels[r, at : at + n] = ids[:-1], ids[1:]
            loss[r, at : at + n] = torch.tensor(s.loss_mask[1:], dtype=torch.float32)
            positions[r, at : at + n] = torch.arange(n)
            segments[r, at : at + n] = seg
            at += n
        positions[r, at:] = torch.arange(length - at)
    batch = {"tokens": tokens, "labels": labels, "loss_mask": loss, "position_ids": positions}
    if packed:
        batch["document_ids"] = segments
    return batch
