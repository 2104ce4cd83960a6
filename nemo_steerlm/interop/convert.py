"""Hugging Face directories ⇄ ``.nemo`` models: import at any TP/PP layout, export at TP=1, initial weights.

* :func:`import_hf` builds our attribute model (APM, fresh seeded regression head) or SFT model from a local
  Hugging Face Llama-architecture directory, loads each rank's TP/PP shard and saves a ``.nemo`` (collective: call on
  every rank).
* :func:`export_hf` restores a ``.nemo`` at TP=1 in one process and writes a ``LlamaForCausalLM`` (SFT) or
  ``LlamaForSequenceClassification`` (APM) directory with the tokenizer and a SteerLM chat template.
* :func:`load_initial_weights` puts pretrained weights (a Hugging Face directory or a ``.nemo``) into an already
  built model at its own layout: what the training stages call for ``init_from``.

Nothing here reads Hydra config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import get_class
from megatron.core import parallel_state
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_steerlm.attributes import TURN_MARKER, AttributeSchema
from nemo_steerlm.config_files import literal_values, load_conf
from nemo_steerlm.config_schema import ModelConfig, SftModelConfig
from nemo_steerlm.errors import MissingInputError, UserError
from nemo_steerlm.interop.chat_template import steerlm_chat_template
from nemo_steerlm.interop.hf_llama import (
    HEAD_KEYS,
    HFInteropError,
    gpt_config_from_hf,
    hf_config_dict,
    hf_to_megatron,
    megatron_to_hf,
    shape_mismatches,
)
from nemo_steerlm.interop.model_card import model_card
from nemo_steerlm.megatron.checkpoint_layout import full_to_shard
from nemo_steerlm.megatron.config import gpt_config_from
from nemo_steerlm.models.checkpoint import (
    MODEL_CLASSES,
    load_matching_weights,
    model_meta,
    read_nemo_meta,
    restore_nemo,
    save_nemo,
)
from nemo_steerlm.ranks import world_size

if TYPE_CHECKING:
    from nemo_steerlm.models.base import MegatronGPTBase

REQUIRED_CONFIG_KEYS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def read_hf_config(hf_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a local Hugging Face model directory.

    Raises:
        MissingInputError: the directory or its ``config.json`` does not exist.
    """
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise MissingInputError(f"model={hf_dir}: no Hugging Face config.json there (expected a model directory)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise HFInteropError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise HFInteropError(f"{path}: expected a JSON object, got {type(config).__name__}")
    for key in REQUIRED_CONFIG_KEYS:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HFInteropError(f"{path}: field '{key}' must be a positive integer, got {value!r}")
    return config


def read_hf_state(hf_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All weights of a local Hugging Face directory (safetensors, sharded safetensors, or ``pytorch_model.bin``)."""
    from safetensors.torch import load_file

    root = Path(hf_dir)

    def load(name: str) -> dict[str, torch.Tensor]:
        if Path(name).name != name:
            raise HFInteropError(f"{root / 'model.safetensors.index.json'}: weight file {name!r} leaves the folder")
        try:
            if name.endswith(".bin"):
                return torch.load(root / name, map_location="cpu", weights_only=True)
            return load_file(str(root / name))
        except Exception as err:  # noqa: BLE001 - safetensors and torch raise many types for a damaged file
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise HFInteropError(f"{root / name}: unreadable or damaged weights file ({first})") from None

    if (root / "model.safetensors").is_file():
        return load("model.safetensors")
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise HFInteropError(f"{index}: not a safetensors index (a JSON object with 'weight_map'): {err}") from None
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load(str(name)))
        return state
    if (root / "pytorch_model.bin").is_file():
        return load("pytorch_model.bin")
    raise MissingInputError(f"model={hf_dir}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def build_model_config(
    hf_config: Mapping[str, Any],
    model_type: str,
    tokenizer_dir: str | os.PathLike[str],
    schema: AttributeSchema,
    layout: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> DictConfig:
    """The flat model config (the ``model`` section of a stage) of a model with a Hugging Face model's shape.

    The values a stage's YAML writes out come from those files (nothing is copied here): layout and numerics from
    ``conf/network/gpt.yaml`` with the layout defaults of ``conf/import_hf.yaml``, the optimizer constants (Adam
    betas, eps, clipping) from ``conf/train_apm.yaml`` or ``conf/train_sft.yaml``. The shape is the Hugging Face
    model's; learning-rate settings are placeholders (an imported model is not trained by this config). The result
    is typed by the training stages' schema of their ``model`` section (:class:`~nemo_steerlm.config_schema.ModelConfig`
    or ``SftModelConfig``), plus ``target``.

    Args:
        hf_config: the Hugging Face ``config.json`` dict.
        model_type: ``apm`` or ``sft``.
        tokenizer_dir: Hugging Face tokenizer directory.
        schema: the attribute schema (the APM's outputs; recorded in both models).
        layout: model-config keys of the layout: ``tensor_model_parallel_size``, ``pipeline_model_parallel_size``,
            ``sequence_parallel``, ``params_dtype``, ``seq_length``, ``make_vocab_size_divisible_by``.
        extra: further model-config keys, set last (e.g. batch sizes and optimizer settings of a training stage).
    """
    if model_type not in MODEL_CLASSES:
        raise UserError(f"model_type={model_type!r}: choose one of {sorted(MODEL_CLASSES)}")
    yaml = {**literal_values(load_conf("network/gpt.yaml")), **literal_values(load_conf("import_hf.yaml").model)}
    layout = dict(layout or {})
    gpt = gpt_config_from_hf(
        hf_config,
        layout.pop("seq_length", yaml["seq_length"]),
        layout.pop("make_vocab_size_divisible_by", yaml["make_vocab_size_divisible_by"]),
    )
    tp = layout.get("tensor_model_parallel_size", yaml["tensor_model_parallel_size"])
    pp = layout.get("pipeline_model_parallel_size", yaml["pipeline_model_parallel_size"])
    dp = max(world_size() // (tp * pp), 1)
    cfg: dict[str, Any] = {
        **{k: v for k, v in gpt.__dict__.items() if k != "vocab_size"},
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        **{k: yaml[k] for k in ("sequence_parallel", "params_dtype", "core_attention", "seed")},
        # no activation recomputation (a preset's setting; the stage that trains the model sets its own)
        **dict.fromkeys(("recompute_granularity", "recompute_method", "recompute_num_layers")),
        "tokenizer": {"path": str(tokenizer_dir)},
        "attributes": {
            "names": list(schema.names),
            "drop": [],
            "min_value": schema.min_value,
            "max_value": schema.max_value,
        },  # fmt: skip
        "micro_batch_size": 1,
        "global_batch_size": dp,
        "max_context_tokens": 0,
        "optim": {
            "lr": 1e-5,
            "min_lr": 0.0,
            "warmup_steps": 0,
            "weight_decay": 0.0,
            **literal_values(load_conf(f"train_{model_type}.yaml").model.optim),  # betas, eps, clip_grad
        },  # fmt: skip
        "data": {"train": None, "validation": None, **({"packing": False} if model_type == "sft" else {})},
    }
    cfg.update(layout)
    # typed by the schema of a training stage's model section: the same fields and types train-apm/train-sft write
    conf = OmegaConf.merge(OmegaConf.structured(SftModelConfig if model_type == "sft" else ModelConfig), cfg)
    for key, value in (extra or {}).items():
        OmegaConf.update(conf, key, value, merge=True)
    with open_dict(conf):
        conf.target = MODEL_CLASSES[model_type]
    return conf


def import_hf(
    hf_dir: str | os.PathLike[str],
    model_type: str,
    out_path: str | os.PathLike[str],
    layout: Mapping[str, Any] | None = None,
    schema: AttributeSchema | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Convert a local Hugging Face Llama-architecture directory into a ``.nemo`` (call on every rank).

    Args:
        hf_dir: the model directory (``config.json``, weights, tokenizer files), read offline.
        model_type: ``apm`` (fresh regression head, seeded by ``seed``; a sequence-classification checkpoint's
            ``score`` head is kept) or ``sft``.
        out_path: the ``.nemo`` to write.
        layout: TP/PP and numerics keys (see :func:`build_model_config`).
        schema: attribute schema; the default nine SteerLM attributes when ``None``.
        extra: further model-config keys.

    Returns:
        The written archive.
    """
    hf_config = read_hf_config(hf_dir)
    cfg = build_model_config(hf_config, model_type, hf_dir, schema or AttributeSchema(), layout, extra)
    model = get_class(cfg.target)(cfg=cfg, trainer=None)
    load_initial_weights(model, hf_dir)
    return save_nemo(model, out_path)


def _check_vocab(model: MegatronGPTBase, hf_vocab: int, source: Any) -> None:
    if model.gpt_config.vocab_size != hf_vocab:
        raise HFInteropError(
            f"{source}: config vocab_size={hf_vocab} but the tokenizer ({model._cfg.tokenizer.path}) has "
            f"{model.gpt_config.vocab_size} tokens; use the model's own tokenizer (model.tokenizer.path)"
        )


def init_regression_head(model: MegatronGPTBase, seed: int) -> None:
    """Re-initialise the APM's regression head from ``seed`` alone (same weights at every layout)."""
    head = getattr(model.model, "regression_head", None)
    if head is None:
        return
    gen = torch.Generator().manual_seed(int(seed))
    std = model.gpt_config.init_method_std
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen, dtype=torch.float32) * std)


def load_full_state(model: MegatronGPTBase, full: Mapping[str, Any]) -> list[str]:
    """Load a full (TP=1, PP=1) megatron state dict into this rank's shard of ``model.model``.

    A missing regression head (pretrained trunk into an APM) is initialised by :func:`init_regression_head` from
    ``model.cfg.seed``; a missing untied ``output_layer`` (APM exported as sequence classification) keeps its
    initialisation. A regression head in ``full`` is ignored by a model without one.

    Returns:
        The keys of this rank's shard that kept their initial values.
    """
    shard = full_to_shard(
        full,
        model.gpt_config,
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_pipeline_model_parallel_world_size(),
    )
    own = model.model.state_dict()
    shard = {k: v for k, v in shard.items() if k in own}
    result = model.model.load_state_dict(shard, strict=False)
    kept = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    allowed = set(HEAD_KEYS) | {"output_layer.weight"}
    wrong = [k for k in kept if k not in allowed]
    if wrong:
        raise HFInteropError(f"pretrained weights lack tensors of this model: {wrong[:8]}")
    if any(k in HEAD_KEYS for k in kept):
        init_regression_head(model, model.cfg.seed)
    return kept


def load_initial_weights(model: MegatronGPTBase, path: str | os.PathLike[str]) -> list[str]:
    """Load pretrained weights into a built model at its own layout (collective for ``.nemo``; call on every rank).

    Args:
        model: an ``AttributePredictionModel`` or ``SteerLMSFTModel`` (its shape must equal the checkpoint's).
        path: a Hugging Face Llama directory (converted on the fly) or a ``.nemo`` of either kind (the trunk is
            loaded; an APM's regression head too when both are APMs, otherwise it is freshly initialised).

    Returns:
        This rank's parameter names that were not in the checkpoint (kept at their initialisation).

    Raises:
        MissingInputError: ``path`` does not exist.
        HFInteropError: the checkpoint's shape or vocabulary differs from the model's (names the fields).
    """
    path = Path(path)
    if path.is_dir():
        hf_config = read_hf_config(path)
        divisible = model.gpt_config.make_vocab_size_divisible_by
        theirs = gpt_config_from_hf(hf_config, make_vocab_size_divisible_by=divisible)
        _check_vocab(model, theirs.vocab_size, f"init weights {path}")
        _check_shape(model, theirs, path)
        full = hf_to_megatron(read_hf_state(path), model.gpt_config)
        return load_full_state(model, full)
    if path.is_file():
        return _load_nemo_weights(model, path)
    raise MissingInputError(f"init weights {path}: no such Hugging Face directory or .nemo file")


def _check_shape(model: MegatronGPTBase, theirs: Any, source: Any) -> None:
    diff = shape_mismatches(model.gpt_config, theirs)
    if diff:
        ours = model.gpt_config
        detail = ", ".join(f"{k}: model {getattr(ours, k)} vs checkpoint {getattr(theirs, k)}" for k in diff)
        raise HFInteropError(f"init weights {source} have another shape than the model ({detail}); set model.<key>")


def _load_nemo_weights(model: MegatronGPTBase, path: Path) -> list[str]:
    """Load the trunk (and a matching regression head) of a ``.nemo`` (see :func:`load_matching_weights`)."""

    def check(cfg: DictConfig) -> None:
        _check_shape(model, gpt_config_from(cfg, model.gpt_config.vocab_size), path)

    kept = load_matching_weights(model, path, check)
    wrong = [k for k in kept if k not in HEAD_KEYS]
    if wrong:
        raise HFInteropError(f"init weights {path} lack tensors of this model: {wrong[:8]}")
    if kept:
        init_regression_head(model, model.cfg.seed)
    return kept


# ------------------------------------------------------------------------------------------------------------ export
def _hf_config(model: MegatronGPTBase, kind: str, dtype: torch.dtype) -> Any:
    """The transformers config of an exported model (``LlamaConfig`` with token ids; the APM's labelled outputs)."""
    from transformers import LlamaConfig

    tok = model.tokenizer
    kwargs = hf_config_dict(model.gpt_config)
    kwargs.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if kind == "apm":
        names = list(model.labelled_schema.names)
        kwargs.update(
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            problem_type="regression",
        )
    config = LlamaConfig(**kwargs)
    config.dtype = dtype
    return config


def export_hf(nemo_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a ``.nemo`` as a Hugging Face directory (one process; the model is restored at TP=1, PP=1).

    SFT → ``LlamaForCausalLM`` whose ``generation_config.json`` stops at the turn marker ``<extra_id_1>``; APM →
    ``LlamaForSequenceClassification`` with one output per labelled attribute (``id2label``; the outputs that never
    met a label are left out), ``pad_token_id`` set so the last non-pad token is scored (pad on the right), and a
    chat template that ends at the ``<extra_id_2>`` read-out; its ``score`` rows equal our bias-free regression
    head's. ``config.json`` carries the rotary settings in the forms of transformers 4 and 5. The tokenizer gets
    the SteerLM chat template; ``steerlm.json`` records the schema; ``README.md`` is the model card.

    Returns:
        A summary: kind, output folder (``model_dir``), architecture, parameter count, stop settings.
    """
    if world_size() > 1:
        raise UserError("export runs in one process (it restores the model at TP=1): start it without torchrun")
    kind = str(read_nemo_meta(nemo_path)["kind"])
    layout = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "sequence_parallel": False,
              "micro_batch_size": 1, "global_batch_size": 1}  # fmt: skip
    model = restore_nemo(nemo_path, kind, layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = model.model.state_dict()
    dtype = next(model.model.parameters()).dtype
    summary = _write_hf_model(model, kind, full, dtype, out)
    write_compatible_config(out / "config.json")
    _write_tokenizer(model, kind, out)
    stops = _write_generation_config(model, out) if kind == "sft" else {}
    meta = {
        **model_meta(model),
        "default_steer_label": model.labelled_schema.steer_label(),
        "source": str(Path(nemo_path).resolve()),
        **stops,
    }
    (out / "steerlm.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(model, kind, meta, summary), encoding="utf-8")
    return {"kind": kind, "output_dir": str(out), "model_dir": str(out), **summary, **stops}


def _write_tokenizer(model: MegatronGPTBase, kind: str, out: Path) -> None:
    """The tokenizer with the SteerLM chat template, loadable by transformers 4 and 5 (see below)."""
    tok = model.tokenizer
    tok.chat_template = steerlm_chat_template(model.labelled_schema.steer_label(), readout=kind == "apm")
    tok.save_pretrained(str(out), save_jinja_files=False)  # the template goes into tokenizer_config.json
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    # transformers 5 names a plain tokenizer.json tokenizer "TokenizersBackend", a class transformers 4 lacks;
    # PreTrainedTokenizerFast is the same tokenizer under the name both versions know (whose transformers 4
    # default would add token_type_ids, which Llama's forward refuses)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.setdefault("model_input_names", ["input_ids", "attention_mask"])
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_compatible_config(path: Path) -> None:
    """Rewrite an exported ``config.json`` so transformers 4 and 5 read the same rotary settings.

    Transformers 5 writes only ``rope_parameters``; transformers 4 reads ``rope_theta`` and ``rope_scaling`` and
    silently falls back to base 10,000 without the former.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    params = dict(config.get("rope_parameters") or {})
    if "rope_theta" in params:
        config["rope_theta"] = params["rope_theta"]
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling.get("rope_type", "default") != "default":
        config["rope_scaling"] = {**scaling, "type": scaling["rope_type"]}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def stop_settings(tokenizer: Any) -> dict[str, Any]:
    """How generation stops at the turn marker ``<extra_id_1>`` with this tokenizer.

    Returns:
        ``eos_token_id``: the ids that end generation (EOS, plus the marker when it is one token);
        ``stop_strings``: ``["<extra_id_1>"]`` when the marker is several tokens (transformers' ``stop_strings``;
        ``generate`` then needs ``tokenizer=``, pipelines pass it themselves; other engines take it as a stop
        string, e.g. vLLM's ``SamplingParams(stop=[...])``), else ``[]``.
    """
    ids = tokenizer(TURN_MARKER, add_special_tokens=False)["input_ids"]
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    if len(ids) == 1:
        return {"eos_token_id": eos + [int(ids[0])], "stop_strings": []}
    return {"eos_token_id": eos, "stop_strings": [TURN_MARKER]}


def _write_generation_config(model: MegatronGPTBase, out: Path) -> dict[str, Any]:
    from transformers import GenerationConfig

    tok = model.tokenizer
    stops = stop_settings(tok)
    eos = stops["eos_token_id"]
    config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=tok.pad_token_id,
        stop_strings=stops["stop_strings"] or None,
    )
    config.save_pretrained(str(out))
    return stops


def _write_hf_model(
    model: MegatronGPTBase, kind: str, full: Mapping[str, Any], dtype: torch.dtype, out: Path
) -> dict[str, Any]:
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    config = _hf_config(model, kind, dtype)
    head = "score" if kind == "apm" else "lm_head"
    state = megatron_to_hf(full, model.gpt_config, head=head)
    if kind == "apm":  # only the outputs that were trained against labels
        rows = [list(model.schema.names).index(n) for n in model.labelled_schema.names]
        state["score.weight"] = state["score.weight"][rows].contiguous()
    cls = LlamaForSequenceClassification if kind == "apm" else LlamaForCausalLM
    with torch.device("meta"):
        hf_model = cls(config)
    result = hf_model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and model.gpt_config.tie_embeddings)]
    if missing or result.unexpected_keys:
        raise HFInteropError(f"export mapping mismatch: missing {missing}, unexpected {result.unexpected_keys}")
    if model.gpt_config.tie_embeddings and kind == "sft":
        hf_model.tie_weights()
    hf_model.to(dtype).save_pretrained(str(out))
    return {
        "architecture": cls.__name__,
        "parameters": sum(t.numel() for t in state.values()),
    }
