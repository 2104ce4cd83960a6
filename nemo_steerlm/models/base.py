"""The NeMo ``ModelPT`` base of both SteerLM models: a megatron-core GPT for this rank's TP rank and pipeline stage.

It turns the model config into the typed megatron configs, checks the parallel layout before allocating anything,
initialises megatron's process groups, builds the GPT (or a subclass), and trains it with megatron's schedules,
DDP, optimizer and LR schedule under Lightning (manual optimization; see :mod:`nemo_steerlm.models.optim`).
Subclasses supply the network class, the batches and the loss.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from megatron.core import parallel_state
from nemo.core.classes import ModelPT
from nemo.core.classes import common as nemo_common
from nemo.utils.app_state import AppState
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.datasets import MegatronBatchSampler
from nemo_steerlm.data.tokenization import PromptPolicy, load_tokenizer
from nemo_steerlm.megatron import parallel
from nemo_steerlm.megatron.builder import (
    build_gpt_model,
    build_optimizer,
    build_scheduler,
    build_transformer_config,
    wrap_ddp,
)
from nemo_steerlm.megatron.config import gpt_config_from, parallel_config_from, validate_layout
from nemo_steerlm.megatron.step import StepResult, run_step
from nemo_steerlm.models.checkpoint import SteerLMSaveRestoreConnector
from nemo_steerlm.models.optim import MegatronOptimizerAdapter
from nemo_steerlm.ranks import world_size

# NeMo 3 instantiates only classes under allowed prefixes when restoring a checkpoint.
if "nemo_steerlm." not in nemo_common.ALLOWED_TARGET_PREFIXES:
    nemo_common.ALLOWED_TARGET_PREFIXES.append("nemo_steerlm.")


class MegatronGPTBase(ModelPT):
    """Shared machinery of the attribute prediction model and the SteerLM SFT model.

    Args:
        cfg: the model config (the ``model`` section of a stage's config; also what a ``.nemo`` stores).
        trainer: the Lightning trainer when training; ``None`` for inference.
    """

    #: short name written into checkpoints and checked when restoring ("apm" or "sft")
    model_kind: ClassVar[str] = ""
    #: megatron's per-token loss averaging (layout-independent masked losses)
    per_token_loss: ClassVar[bool] = True

    def __init__(self, cfg: DictConfig, trainer: Trainer | None = None) -> None:
        super().__init__(cfg=cfg, trainer=trainer)
        a = self._cfg.attributes
        self.schema = AttributeSchema.create(list(a.names), list(a.drop), a.min_value, a.max_value)
        self.tokenizer = load_tokenizer(self._cfg.tokenizer.path)
        self.gpt_config = gpt_config_from(self._cfg, len(self.tokenizer))
        self.parallel_config = parallel_config_from(self._cfg)
        self.data_parallel_size = validate_layout(
            self.gpt_config,
            self.parallel_config,
            world_size(),
            self._cfg.micro_batch_size,
            self._cfg.global_batch_size,
        )
        parallel.initialize_model_parallel(self.parallel_config, self._cfg.seed)
        # ModelPT.save_to then calls the connector on every rank (the save is collective)
        AppState().model_parallel_size = self.parallel_config.model_parallel_size
        self._save_restore_connector = SteerLMSaveRestoreConnector()
        self.transformer_config = build_transformer_config(
            self.gpt_config, self.parallel_config, calculate_per_token_loss=self.per_token_loss
        )
        self.model = build_gpt_model(
            self.gpt_config,
            self.transformer_config,
            model_cls=self.network_class(),
            core_attention=self.parallel_config.core_attention,
            **self.network_kwargs(),
        )
        self.automatic_optimization = False
        self._ddp_chunks: list[torch.nn.Module] = []
        self._train_batches: MegatronBatchSampler | None = None  # the training loader's, to resume mid-epoch
        self.last_step: StepResult | None = None

    # --- the attributes training saw ---------------------------------------------------------------------------
    @property
    def labelled_schema(self) -> AttributeSchema:
        """The attributes with labels in this model's training data (the whole schema when none were recorded).

        An APM trained on HelpSteer alone has outputs for the OASST attributes that never met a label; an SFT model
        trained on its annotations never saw those names in a prompt. Annotation writes, and steering asks for,
        only these attributes.
        """
        names = self._cfg.get("labelled_attributes")
        return self.schema.subset(names) if names else self.schema

    @property
    def prompt_policy(self) -> PromptPolicy:
        """What this model reads of a conversation, in training and on every inference path.

        From the model config (``seq_length``, ``max_context_tokens``), so from the ``.nemo`` a restored model came
        from; ``steerlm.json`` repeats it for readers of the archive.
        """
        return PromptPolicy(self._cfg.seq_length, self._cfg.max_context_tokens)

    def record_labelled_attributes(self, names: Iterable[str]) -> None:
        """Stores the attributes seen in training labels in the model config (and so in the ``.nemo``)."""
        seen = set(names)
        with open_dict(self._cfg):
            self._cfg.labelled_attributes = [n for n in self.schema.names if n in seen]

    # --- what subclasses provide -------------------------------------------------------------------------------
    def network_class(self) -> type:
        """The megatron module class of this model."""
        raise NotImplementedError

    def network_kwargs(self) -> dict[str, Any]:
        """Extra constructor arguments of :meth:`network_class`."""
        return {}

    def forward_step(self, data_iterator: Any, model: torch.nn.Module) -> tuple[Any, Any]:
        """Megatron's ``forward_step``: run one micro-batch, return ``(output, loss_func)``."""
        raise NotImplementedError

    # --- NeMo ModelPT contract ---------------------------------------------------------------------------------
    @classmethod
    def list_available_models(cls) -> list:
        """No pretrained checkpoints are published; start from ``import-hf`` or train."""
        return []

    @classmethod
    def restore_from(  # type: ignore[override]
        cls,
        restore_path: str,
        override_config_path: Any = None,
        map_location: Any = None,
        strict: bool = True,
        return_config: bool = False,
        save_restore_connector: Any = None,
        trainer: Trainer | None = None,
        validate_access_integrity: bool = True,
    ) -> MegatronGPTBase:
        """Restores a ``.nemo`` at the current parallel layout (pass layout overrides as a dict).

        Example: ``AttributePredictionModel.restore_from("apm.nemo", {"tensor_model_parallel_size": 2})``.
        """
        connector = save_restore_connector or SteerLMSaveRestoreConnector()
        return connector.restore_from(
            cls,
            restore_path,
            override_config_path,
            map_location,
            strict,
            return_config,
            trainer,
            validate_access_integrity,
        )

    def setup_training_data(self, train_data_config: DictConfig | dict | None) -> None:
        """Data loaders are built in :meth:`setup` from ``model.data`` (kept out of ModelPT's eager set-up)."""

    def setup_validation_data(self, val_data_config: DictConfig | dict | None) -> None:
        """See :meth:`setup_training_data`."""

    # --- megatron step -------------------------------------------------------------------------------------------
    def chunks(self) -> list[torch.nn.Module]:
        """The model chunks megatron's schedules run: DDP-wrapped when training, the bare module otherwise."""
        return self._ddp_chunks or [self.model]

    def split_micro_batches(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Splits this rank's share of a global batch into micro-batches of ``model.micro_batch_size``."""
        size = self._cfg.micro_batch_size
        n = next(iter(batch.values())).shape[0]
        return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]

    def make_loader(self, dataset: Any, train: bool, collate: Any) -> DataLoader:
        """A loader yielding this data-parallel rank's share of each global batch (megatron batch semantics)."""
        sampler = MegatronBatchSampler(
            len(dataset),
            self._cfg.global_batch_size,
            parallel_state.get_data_parallel_rank(),
            parallel_state.get_data_parallel_world_size(),
            shuffle=train,
            seed=self._cfg.seed,
            drop_last=train,
        )
        if train:
            self._train_batches = sampler
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)

    def on_train_start(self) -> None:
        """After a mid-epoch resume, continues the restored epoch's batch order where the checkpoint left it.

        Lightning restores the step, the epoch and how many of the epoch's batches were done, and ends the epoch
        after the remaining ones, but iterates a map-style loader from its first batch; the sampler skips those
        done instead, so no batch is trained twice and none is missed.
        """
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if self._train_batches is not None and done > 0:
            self._train_batches.resume_at(self.trainer.current_epoch, done)
            # Lightning's warning that a mid-epoch resume of a map-style loader is inexact no longer applies
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def configure_optimizers(self) -> MegatronOptimizerAdapter:
        """Wraps the model in megatron DDP and builds megatron's optimizer and cosine schedule.

        ``model.optim.use_distributed_optimizer`` shards the fp32 main weights and Adam's moments over the
        data-parallel ranks (megatron's distributed optimizer: gradients are reduce-scattered, updated shards
        all-gathered); checkpoints hold the gathered state (:mod:`nemo_steerlm.models.optim`).
        """
        o = self._cfg.optim
        distributed = bool(o.use_distributed_optimizer)
        self._ddp_chunks = wrap_ddp([self.model], self.transformer_config, use_distributed_optimizer=distributed)
        optimizer = build_optimizer(
            self._ddp_chunks,
            lr=float(o.lr),
            weight_decay=float(o.weight_decay),
            clip_grad=float(o.clip_grad),
            betas=(float(o.betas[0]), float(o.betas[1])),
            eps=float(o.eps),
            min_lr=float(o.min_lr),
            params_dtype=self.parallel_config.params_dtype,
            use_distributed_optimizer=distributed,
        )
        total = int(self.trainer.max_steps) if self.trainer is not None and self.trainer.max_steps > 0 else 1
        scheduler = build_scheduler(
            optimizer, float(o.lr), total, int(o.warmup_steps), float(o.min_lr), float(o.weight_decay)
        )
        return MegatronOptimizerAdapter(optimizer, scheduler)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimizer step over this rank's share of the global batch."""
        adapter = self.optimizers().optimizer
        micro = self.split_micro_batches(batch)
        seq = int(batch["tokens"].shape[1])

        def closure() -> StepResult:
            return run_step(
                self.forward_step,
                self._ddp_chunks,
                micro,
                seq_length=seq,
                micro_batch_size=int(micro[0]["tokens"].shape[0]),
                optimizer=adapter.megatron_optimizer,
                scheduler=adapter.scheduler,
            )

        result: StepResult = self.optimizers().step(closure=closure)
        self.last_step = result
        self.log("train_loss", result.loss, prog_bar=True, rank_zero_only=True, batch_size=1)
        self.log("lr", result.lr or 0.0, prog_bar=True, rank_zero_only=True, batch_size=1)
        if result.grad_norm is not None:
            self.log("grad_norm", result.grad_norm, rank_zero_only=True, batch_size=1)
        return torch.tensor(result.loss)

    # --- parallel helpers ----------------------------------------------------------------------------------------
    @staticmethod
    def broadcast_from_last_stage(obj: Any) -> Any:
        """Sends a Python object from the last pipeline stage to the other stages of this pipeline."""
        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            return obj
        holder = [obj]
        dist.broadcast_object_list(
            holder,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
        return holder[0]

    def model_summary(self) -> dict[str, Any]:
        """Shape, layout and parameter count (this rank's shard) for logs and reports."""
        return {
            "kind": self.model_kind,
            "attributes": list(self.schema.names),
            "layout": {
                "tp": self.parallel_config.tensor_model_parallel_size,
                "pp": self.parallel_config.pipeline_model_parallel_size,
                "dp": self.data_parallel_size,
            },
            "parameters_this_rank": sum(p.numel() for p in self.model.parameters()),
            "config": OmegaConf.to_container(self._cfg, resolve=True),
        }
