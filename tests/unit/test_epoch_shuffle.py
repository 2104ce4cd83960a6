"""Training batches reshuffle every epoch under a real Lightning trainer, so no sample is left out for good.

With ``drop_last`` a dataset of 14 samples and a global batch of 8 gives one step per epoch; a sampler whose order
never changes trains the same 8 samples forever (the defect behind a memorisation check that selected 31 of 48).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from nemo_steerlm.data.datasets import MegatronBatchSampler


class _Recorder(pl.LightningModule):
    def __init__(self, sampler: MegatronBatchSampler) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.sampler = sampler
        self.seen: list[list[int]] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(sorted(batch.tolist()))
        return self.layer(torch.ones(1, 1)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(list(range(14)), batch_sampler=self.sampler)


def _fit(steps: int, shuffle: bool = True) -> list[list[int]]:
    module = _Recorder(MegatronBatchSampler(14, 8, 0, 1, shuffle=shuffle, seed=3, drop_last=True))
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module)
    return module.seen


def test_every_epoch_draws_a_new_batch_and_every_sample_is_trained() -> None:
    seen = _fit(8)
    assert len(seen) == 8 and all(len(b) == 8 for b in seen)
    assert len({tuple(b) for b in seen}) > 1  # the epochs differ
    assert set().union(*map(set, seen)) == set(range(14))  # nothing is left out for good
    # the same order as the sampler's own epochs 0..7 (seed + epoch), so a resumed run can repeat it
    expected = []
    for epoch in range(8):
        sampler = MegatronBatchSampler(14, 8, 0, 1, shuffle=True, seed=3, drop_last=True)
        sampler.set_epoch(epoch)
        expected.append(sorted(next(iter(sampler))))
    assert seen == expected


def test_without_shuffle_the_order_is_the_input_order() -> None:
    assert _fit(2, shuffle=False) == [list(range(8))] * 2


def test_resume_at_continues_the_epoch_order_once() -> None:
    def batches(s: MegatronBatchSampler, epoch: int) -> list[list[int]]:
        s.set_epoch(epoch)
        return list(s)

    full = batches(MegatronBatchSampler(40, 8, 0, 1, shuffle=True, seed=3, drop_last=True), 2)
    resumed = MegatronBatchSampler(40, 8, 0, 1, shuffle=True, seed=3, drop_last=True)
    resumed.resume_at(2, 3)
    assert batches(resumed, 1) == batches(MegatronBatchSampler(40, 8, 0, 1, True, 3, True), 1)  # other epoch: whole
    assert batches(resumed, 2) == full[3:]  # the interrupted epoch: from its 4th batch on
    assert batches(resumed, 2) == full  # once only: the next pass over that epoch is whole again
