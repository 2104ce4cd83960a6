"""The config schemas: every stage YAML is typed by its dataclass, and the schemas agree with the library's types.

Two paths that must agree are compared directly: the model section a training stage composes and the one Hugging
Face import builds, the schema of the model shape and ``GPTConfig``, the layout fields and ``ParallelConfig``.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

import nemo_steerlm.recipes.common as common  # registers the schemas
from nemo_steerlm import config_schema, stages
from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.megatron.config import GPT_FIELDS, GPTConfig, ParallelConfig
from nemo_steerlm.sampling import SamplingParams

CONF = Path(common.CONF_DIR)


def _compose(config: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=config, overrides=["output_dir=/tmp/x", *overrides])


def test_every_stage_has_a_schema_and_its_yaml_is_typed_by_it() -> None:
    assert {s.config for s in stages.STAGES} == set(config_schema.STAGE_SCHEMAS)
    for stage in stages.STAGES:
        cfg = _compose(stage.config)
        assert OmegaConf.get_type(cfg) is config_schema.STAGE_SCHEMAS[stage.config], stage.name


def test_typed_fields_come_back_as_their_types() -> None:
    cfg = _compose("train_sft", "preset=smollm2_135m")
    assert type(cfg.trainer.devices) is int and type(cfg.model.optim.lr) is float
    assert type(cfg.model.data.packing) is bool and type(cfg.model.num_layers) is int  # through interpolations
    preset = OmegaConf.to_object(cfg.preset)
    assert isinstance(preset, config_schema.PresetConfig) and preset.arch.num_layers == 30


@pytest.mark.parametrize(
    ("config", "override", "key"),
    [
        ("train_apm", "trainer.max_steps=abc", "trainer.max_steps"),
        ("train_apm", "preset.arch.num_layers=2.5", "preset.arch.num_layers"),
        ("generate", "limit=abc", "limit"),  # a null default: no YAML value to infer the type from
        ("annotate", "batch_size=many", "batch_size"),
        ("evaluate", "steerability.levels=[0,high]", "steerability.levels[1]"),
        ("serve", "batch_wait_ms=soon", "batch_wait_ms"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_at_compose_time_with_its_key(config: str, override: str, key: str):
    with pytest.raises(ConfigCompositionException) as caught:
        _compose(config, override)
    assert isinstance(caught.value.__cause__, ValidationError)
    message = common.config_error(caught.value)
    assert message.startswith(f"{override}: expected") or message.startswith(f"{key}="), message


def test_an_unknown_key_is_refused_and_the_message_lists_the_keys_there() -> None:
    with pytest.raises(ConfigCompositionException) as caught:
        _compose("generate", "sampling.temprature=0.5")
    message = common.config_error(caught.value)
    assert message.startswith("sampling.temprature: no such setting") and "temperature, top_k" in message, message


def test_a_wrongly_typed_interpolation_names_the_key_when_it_resolves() -> None:
    cfg = _compose("train_apm", "preset.apm.max_steps=${preset.name}")
    with pytest.raises(ValidationError) as caught:
        OmegaConf.resolve(cfg)
    assert "expected an integer" in common.config_error(caught.value)


def test_sampling_sections_build_the_library_type_and_run_its_checks() -> None:
    params = common.sampling_params(_compose("generate", "sampling.top_k=5").sampling, "sampling")
    assert isinstance(params, SamplingParams) and params.top_k == 5
    evaluated = common.sampling_params(_compose("evaluate").generation, "generation")
    assert evaluated.use_cache is True and evaluated.temperature == 0.7  # a field the section leaves out: default
    with pytest.raises(common.UserError, match=r"^sampling\.top_p=1\.5"):
        common.sampling_params(_compose("generate", "sampling.top_p=1.5").sampling, "sampling")


def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _plain(kind: object) -> object:
    """``Literal['a', 'b']`` -> ``str``, ``Optional[X]`` / ``X | None`` -> ``(X, None)``."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Literal:
        return type(args[0])
    if type(None) in args:
        return (_plain(next(a for a in args if a is not type(None))), None)
    return kind


def test_the_model_shape_schema_is_gptconfig_without_the_vocabulary() -> None:
    schema, typed = _hints(config_schema.ArchConfig), _hints(GPTConfig)
    assert set(schema) == set(GPT_FIELDS) == set(typed) - {"vocab_size"}
    for name, kind in schema.items():
        assert _plain(kind) == _plain(typed[name]), name


def test_the_layout_fields_of_the_model_section_are_parallelconfig_fields() -> None:
    schema, typed = _hints(config_schema.NetworkConfig), _hints(ParallelConfig)
    shared = set(schema) & set(typed)
    assert shared == set(typed) - {"overlap_grad_reduce"}  # a GPU-only runtime switch, not a model setting
    for name in shared:
        assert _plain(schema[name]) == _plain(typed[name]), name


@pytest.mark.parametrize("model_type", ["apm", "sft"])
def test_hf_import_builds_the_model_section_a_training_stage_composes(model_type: str) -> None:
    """Keys and types of import-hf's model config equal those train-apm / train-sft write into a .nemo."""
    from nemo_steerlm.interop.convert import build_model_config
    from nemo_steerlm.resources import tiny_tokenizer_path

    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 172,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": 4096,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    }
    imported = build_model_config(hf, model_type, tiny_tokenizer_path(), AttributeSchema())
    trained = _compose(f"train_{model_type}").model
    assert OmegaConf.get_type(imported) is OmegaConf.get_type(trained)
    plain_imported = OmegaConf.to_container(imported, resolve=True)
    plain_trained = OmegaConf.to_container(trained, resolve=True)
    assert set(plain_imported) - {"target"} == set(plain_trained)
    for key, value in plain_trained.items():
        if value is not None and not isinstance(value, dict):
            assert type(plain_imported[key]) is type(value), key
