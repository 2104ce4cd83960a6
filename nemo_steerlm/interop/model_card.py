"""The ``README.md`` model card of an exported SteerLM model: base model, data, attributes, label syntax, licence.

Everything in the card comes from the ``.nemo`` (its stored config) and the export itself; what the archive does not
record (the base model's name, its licence) is said to be the user's to fill in, never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from nemo_steerlm.attributes import LABEL_MARKER, TURN_MARKER

if TYPE_CHECKING:
    from nemo_steerlm.models.base import MegatronGPTBase

_KIND_TEXT = {
    "sft": "a SteerLM attribute-conditioned chat model (`LlamaForCausalLM`): the assistant's answer follows the "
    "attribute values asked for in the prompt",
    "apm": "a SteerLM attribute prediction model (`LlamaForSequenceClassification`, regression): it scores an "
    "assistant answer on each attribute",
}


def _name(path: Any) -> str:
    return "not recorded" if path in (None, "") else f"`{Path(str(path)).name}`"


def _usage(kind: str, meta: dict[str, Any]) -> str:
    if kind == "apm":
        return (
            "```python\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            "tok = AutoTokenizer.from_pretrained(PATH)\n"
            "model = AutoModelForSequenceClassification.from_pretrained(PATH)\n"
            'messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]\n'
            "ids = tok.apply_chat_template(messages, return_tensors='pt', return_dict=True)\n"
            "scores = model(**ids).logits[0]  # one value per id2label entry, 0 (worst) .. 4 (best)\n"
            "```\n\n"
            f"The chat template ends the text with the read-out marker `{LABEL_MARKER}`, whose hidden state the score "
            "head was trained on; score a batch padded on the right. Round and clip the scores to 0..4 for labels.\n"
        )
    stop = (
        f"`generation_config.json` stops at EOS and at the turn marker `{TURN_MARKER}`"
        + (
            f" (several tokens in this tokenizer, so through `stop_strings`: pass `tokenizer=tok` to `generate`; "
            f'pipelines do it themselves; for vLLM give `stop=["{TURN_MARKER}"]`)'
            if meta.get("stop_strings")
            else " (one token here, listed in `eos_token_id`)"
        )
        + "."
    )
    return (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(PATH)\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH)\n"
        'messages = [{"role": "user", "content": "Write a haiku about the sea."}]\n'
        'label = "' + meta["default_steer_label"].replace("verbosity:4", "verbosity:1") + '"\n'
        "ids = tok.apply_chat_template(messages, add_generation_prompt=True, steer_label=label, return_tensors='pt',\n"
        "                              return_dict=True)\n"
        "out = model.generate(**ids, tokenizer=tok, max_new_tokens=200, do_sample=False)\n"
        "print(tok.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True).split('"
        + TURN_MARKER
        + "')[0])\n"
        "```\n\n" + stop + "\n"
    )


def _reading(policy: Any) -> str:
    """The prompt policy in words: what training kept of a conversation, and how to cut prompts the same way."""
    if policy.max_context_tokens <= 0:
        return (
            f"Training kept whole conversations up to {policy.seq_length} tokens. Keep prompt plus answer within that "
            "length, cutting the prompt from the left."
        )
    return (
        f"Training kept at most {policy.max_context_tokens} tokens before each first answer (system prompt, user "
        f"turn, assistant header and label, cut from the left), in sequences of up to {policy.seq_length} tokens. "
        "The chat template renders the whole conversation, so cut its token ids to the last "
        f"{policy.max_context_tokens} (and to {policy.seq_length} minus `max_new_tokens`) before `generate`: "
        "`ids = ids[:, -N:]`. The label sits at the end and always survives. `nemo-steerlm generate` and `evaluate` "
        "cut this way themselves."
    )


def model_card(model: MegatronGPTBase, kind: str, meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """The model card text.

    Args:
        model: the restored model (its ``cfg`` is the ``.nemo``'s stored config).
        kind: ``sft`` or ``apm``.
        meta: the export's ``steerlm.json`` content.
        summary: the export summary (architecture, parameters).
    """
    gpt = model.gpt_config
    cfg = model.cfg
    train = OmegaConf.select(cfg, "data.train", default=None)
    labelled = meta["labelled_attributes"]
    lo, hi = meta["value_range"]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [steerlm, helpsteer, nemo-steerlm]",
        "---",
        f"# SteerLM {kind.upper()} export",
        "",
        f"This folder holds {_KIND_TEXT[kind]}. It was exported by `nemo-steerlm export` from "
        f"`{Path(meta['source']).name}`.",
        "",
        "## Base model",
        f"- Architecture: {summary['architecture']}, {summary['parameters']:,} parameters: {gpt.num_layers} layers, "
        f"hidden {gpt.hidden_size}, {gpt.num_attention_heads} heads ({gpt.num_query_groups} key/value groups), "
        f"rope base {gpt.rotary_base:g}, context {gpt.seq_length} tokens.",
        "- Tokenizer: the base model's, saved in this folder.",
        "- The base checkpoint's name is not recorded in the `.nemo`: add it here.",
        "",
        "## Data",
        f"- Training file: {_name(train)} (SteerLM SFT or regression JSONL made by `nemo-steerlm prepare`/`annotate`"
        ", from HelpSteer and, when chosen, OpenAssistant).",
        "",
        "## Attributes",
        f"- Values {lo:g} (least) to {hi:g} (most); labelled in training: {', '.join(labelled)}.",
        f"- All attributes of the schema: {', '.join(meta['attributes'])}.",
        "",
        "## Steering label syntax",
        f"`name:value` pairs joined by commas, in schema order, e.g. `{meta['default_steer_label']}` (the default). "
        f"The prompt is `<extra_id_0>System\\n{{system}}\\n{TURN_MARKER}User\\n{{prompt}}\\n{TURN_MARKER}Assistant\\n"
        f"{LABEL_MARKER}{{label}}\\n`; the chat template renders it (`steer_label=` picks the label).",
        "",
        *(["## How much of a prompt the model reads", _reading(model.prompt_policy), ""] if kind == "sft" else []),
        "## Use",
        _usage(kind, meta),
        "## Licence",
        "These weights are a derivative of the base model and inherit its licence (for example the Llama 2 Community "
        "License or the Llama 3 licence; SmolLM2 is Apache-2.0). HelpSteer is CC-BY-4.0; OpenAssistant oasst1 is "
        "Apache-2.0. State the base model's licence here before you share the folder.",
        "",
    ]
    return "\n".join(lines)
