"""One prompt policy: inference reads exactly what train-sft kept of a conversation, at every preset.

Training tokenises the whole conversation and keeps at most ``max_context_tokens`` tokens before the first trained
response; an inference prompt (the same conversation up to ``<extra_id_2>{label}\\n``) must be cut to the same ids.
The reference here is independent of the policy code: the training sample's ids before its first trained token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.sources import helpsteer_to_conversation
from nemo_steerlm.data.template import Conversation, Turn, render_prompt, render_sft, tokenize_rendered
from nemo_steerlm.data.tokenization import MIN_PROMPT_TOKENS, PromptPolicy, encode_prompt, encode_sft, load_tokenizer
from nemo_steerlm.errors import UserError
from nemo_steerlm.models.generation import prompt_conversation
from nemo_steerlm.recipes.common import CONF_DIR
from nemo_steerlm.resources import gpt2_tokenizer_path, helpsteer_sample_path, tiny_tokenizer_path

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "preset").glob("*.yaml"))


def _preset(name: str) -> tuple[PromptPolicy, int]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="train_sft", overrides=[f"preset={name}", "output_dir=/tmp/x"])
    policy = PromptPolicy(int(cfg.preset.arch.seq_length), int(cfg.preset.sft.max_context_tokens))
    return policy, int(cfg.preset.eval.max_new_tokens)


@pytest.fixture(scope="module")
def conversations() -> list[Conversation]:
    schema = AttributeSchema()
    lines = helpsteer_sample_path().read_text(encoding="utf-8").splitlines()
    return [helpsteer_to_conversation(json.loads(line), schema) for line in lines]


@pytest.mark.parametrize("preset", PRESETS)
def test_inference_reads_the_ids_training_kept(preset: str, conversations: list[Conversation]) -> None:
    policy, max_new = _preset(preset)
    # the tiny preset's own tokenizer; the others' (SmolLM2, Llama) are not shipped: GPT-2's BPE stands in
    tokenizer = load_tokenizer(tiny_tokenizer_path() if preset == "tiny_cpu" else gpt2_tokenizer_path())
    compared = 0
    for conv in conversations:
        tok = tokenize_rendered(render_sft(conv), tokenizer)
        kept = encode_sft(tok.input_ids, tok.loss_mask, policy.seq_length, policy.max_context_tokens)
        first_trained = kept.loss_mask.index(True)
        trained_context = kept.input_ids[:first_trained]
        prompt, _ = prompt_conversation(conv)
        inference = encode_prompt(prompt, conv.turns[-1].label, tokenizer, policy, max_new).input_ids
        response_tokens = len(tok.input_ids) - tok.loss_mask.index(True)
        if response_tokens <= policy.seq_length + 1 - policy.prompt_limit(max_new):
            assert inference == trained_context  # the response left training its whole context budget
            compared += 1
        else:  # a response so long that training kept less context: inference reads a longer tail of it
            assert inference[-len(trained_context) :] == trained_context
    assert compared >= 0.95 * len(conversations)


def test_the_tiny_preset_reads_its_64_tokens_not_the_seq_length(conversations: list[Conversation]) -> None:
    policy, max_new = _preset("tiny_cpu")
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    for conv in conversations:  # the first row whose prompt is far longer than the cap
        prompt, _ = prompt_conversation(conv)
        label = conv.turns[-1].label
        full = tokenizer(render_prompt(prompt, label), add_special_tokens=False)["input_ids"]
        if len(full) > 300:
            break
    got = encode_prompt(prompt, label, tokenizer, policy, max_new)
    assert len(full) > 300 and got.truncated
    assert got.input_ids == full[-policy.max_context_tokens :] and policy.max_context_tokens == 64


def test_multi_turn_prompt_is_cut_before_its_first_answer_like_training() -> None:
    tokenizer = load_tokenizer(gpt2_tokenizer_path())
    policy = PromptPolicy(seq_length=512, max_context_tokens=16)
    long_question = "Tell me about rivers and the seas they run into. " * 8
    turns = [
        Turn(long_question, "User"),
        Turn("Rivers run to the sea.", "Assistant", "verbosity:1"),
        Turn("And lakes?", "User"),
        Turn("Lakes are still water, fed by rivers and rain.", "Assistant", "verbosity:2"),
    ]
    tok = tokenize_rendered(render_sft(Conversation(turns)), tokenizer)
    kept = encode_sft(tok.input_ids, tok.loss_mask, policy.seq_length, policy.max_context_tokens)
    # training: 16 tokens before the first answer, everything after it; the second answer starts at the last run
    starts = [i for i in range(1, len(kept.loss_mask)) if kept.loss_mask[i] and not kept.loss_mask[i - 1]]
    expected = kept.input_ids[: starts[-1]]
    got = encode_prompt(Conversation(turns[:3]), "verbosity:2", tokenizer, policy, max_new_tokens=64)
    assert got.input_ids == expected and got.truncated
    assert len(got.input_ids) > policy.max_context_tokens  # the cap bounds the context before the first answer only


def test_a_budget_without_room_for_the_label_is_refused() -> None:
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    policy = PromptPolicy(seq_length=512, max_context_tokens=64)
    conv = Conversation([Turn("Hello there, how are rivers formed?", "User")])
    label = AttributeSchema().steer_label()
    label_tokens = len(tokenizer(f"<extra_id_1>Assistant\n<extra_id_2>{label}\n")["input_ids"])
    room_needed = label_tokens + MIN_PROMPT_TOKENS
    ok = encode_prompt(conv, label, tokenizer, policy, max_new_tokens=512 - room_needed)
    assert ok.input_ids[-label_tokens:] == tokenizer(f"<extra_id_1>Assistant\n<extra_id_2>{label}\n")["input_ids"]
    with pytest.raises(UserError, match=r"sampling.max_new_tokens=\d+ leaves \d+ prompt tokens .*seq_length=512"):
        encode_prompt(conv, label, tokenizer, policy, max_new_tokens=512 - room_needed + 1)
    with pytest.raises(UserError, match="sampling.max_new_tokens=512 leaves 0 prompt tokens"):
        encode_prompt(conv, label, tokenizer, policy, max_new_tokens=512)
