"""Megatron's distributed optimizer in a world of one: the setting reaches megatron, and its state survives a save
and load through our optimizer adapter (adapter patches 10 and 11). Two-rank sharding: tests/distributed."""

from __future__ import annotations

import torch

from nemo_steerlm.megatron.config import PRESETS, ParallelConfig

TINY = PRESETS["tiny_cpu"].with_vocab_size(100)
STEPS, SPLIT = 4, 2


def _run(distributed: bool, state: dict | None = None):
    """A tiny GPT with megatron DDP, optimizer and schedule; loaded from ``state`` (model and optimizer) if given."""
    from nemo_steerlm.megatron import builder, parallel
    from nemo_steerlm.models.optim import MegatronOptimizerAdapter

    parallel.initialize_model_parallel(ParallelConfig(), seed=0)
    config = builder.build_transformer_config(TINY, ParallelConfig())
    model = builder.build_gpt_model(TINY, config)
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
    chunks = builder.wrap_ddp([model], config, use_distributed_optimizer=distributed)
    optimizer = builder.build_optimizer(chunks, lr=1e-2, weight_decay=0.01, use_distributed_optimizer=distributed)
    adapter = MegatronOptimizerAdapter(optimizer, builder.build_scheduler(optimizer, lr=1e-2, total_steps=STEPS))
    if state is not None:
        adapter.load_state_dict(state["optimizer"])
    return model, chunks, adapter


def _train(chunks, adapter, steps: range) -> list[float]:
    from nemo_steerlm.megatron.step import run_step

    def forward_step(data_iterator, model):
        tokens = next(data_iterator)["tokens"]
        logits = model(tokens, torch.arange(16).expand(2, 16), None)
        return logits, lambda out: (out.float().pow(2).mean(), {"loss": out.float().pow(2).mean().detach()})

    losses = []
    for step in steps:
        tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(step))
        result = run_step(
            forward_step,
            chunks,
            [{"tokens": tokens}],
            seq_length=16,
            micro_batch_size=2,
            optimizer=adapter.megatron_optimizer,
            scheduler=adapter.scheduler,
        )
        losses.append(result.loss)
    return losses


def test_the_setting_builds_megatrons_distributed_optimizer_and_trains_like_the_plain_one():
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    from nemo_steerlm.models.optim import sub_optimizers, uses_distributed_optimizer

    model, chunks, plain = _run(False)
    initial = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    plain_losses = _train(chunks, plain, range(STEPS))
    plain_weights = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    model, chunks, dist = _run(True)
    assert uses_distributed_optimizer(dist.megatron_optimizer) and not uses_distributed_optimizer(
        plain.megatron_optimizer
    )
    assert all(isinstance(sub, DistributedOptimizer) for sub in sub_optimizers(dist.megatron_optimizer))
    assert _train(chunks, dist, range(STEPS)) == plain_losses
    moved = max(float((plain_weights[k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-3  # the updates did something
    # the same updates: bit for bit on some CPUs, within a few float32 ulps on others (AdamW's elementwise kernels
    # vectorise a shard and a whole buffer differently; measured 1.2e-7 at most), against 2.5e-2 of movement
    for key, tensor in model.state_dict().items():
        if torch.is_tensor(tensor):
            torch.testing.assert_close(tensor, plain_weights[key], rtol=0, atol=5e-7, msg=key)


def test_saved_state_restores_each_parameters_own_step_and_resumes_exactly():
    from nemo_steerlm.megatron.adapter import apply_torch_adam_patches

    assert apply_torch_adam_patches() is True  # no apex/TransformerEngine here: megatron uses torch's AdamW
    model, chunks, adapter = _run(True)
    _train(chunks, adapter, range(STEPS))
    straight = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}

    model, chunks, adapter = _run(True)
    _train(chunks, adapter, range(SPLIT))
    saved = {"model": model.state_dict(), "optimizer": adapter.state_dict()}
    assert adapter.state_dict()["optimizer"]["param_state_sharding_type"] == "dp_zero_gather_scatter"
    model, chunks, adapter = _run(True, saved)
    states = list(adapter.megatron_optimizer.chained_optimizers[0].optimizer.state.values())
    assert len({id(s["step"]) for s in states}) == len(states)  # one counter each (megatron shares one)
    assert {float(s["step"]) for s in states} == {float(SPLIT)}
    _train(chunks, adapter, range(SPLIT, STEPS))
    for key, tensor in model.state_dict().items():
        if torch.is_tensor(tensor):
            assert torch.equal(tensor, straight[key]), key


def test_an_optimizer_that_never_stepped_saves_nothing_and_loads_as_fresh():
    _, _, adapter = _run(True)
    state = adapter.state_dict()
    assert state["optimizer"] is None
    adapter.load_state_dict(state)
