"""Stage ``generate``: steered generation with a SteerLM SFT model.

Run ``nemo-steerlm generate model=SFT.nemo data=PROMPTS.jsonl output_dir=D [steer.verbosity=0 ...]`` or
``python -m nemo_steerlm.recipes.generate ...``. Writes ``D/generations.jsonl`` atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.attributes import USER_ROLE, AttributeSchema, LabelError
from nemo_steerlm.data.io import DataError, dump_json_line, read_jsonl, write_jsonl_atomic
from nemo_steerlm.data.template import Conversation, Turn
from nemo_steerlm.errors import UserError
from nemo_steerlm.recipes.common import (
    accept_steer_overrides,
    inference_layout,
    is_global_rank_zero,
    require_path,
    sampling_params,
    stage_main,
    steer_overrides,
)

OUTPUT_NAME = "generations.jsonl"
#: ``label=from_data``: answer each conversation under the label of its own trailing assistant turn
FROM_DATA = "from_data"


@dataclass(frozen=True)
class Prompt:
    """One line of a prompt file: its id and line, the conversation to answer, and the trailing assistant turn.

    ``reference`` and ``reference_label`` are the text and label of the assistant turn a conversation ended with
    (``None`` for prompts and MT-Bench questions).
    """

    ident: str
    line: int
    conversation: Conversation
    reference: str | None = None
    reference_label: str | None = None


def steering_labels(cfg: DictConfig, schema: AttributeSchema, prompts: list[Prompt], path: Path) -> list[str]:
    """The label of each prompt: ``label`` (a label string, or ``from_data``), else the default steering label.

    Raises:
        UserError: a label that does not parse; with ``from_data``, a line whose conversation does not end with a
            labelled assistant turn (naming the file and line).
    """
    if cfg.label is None:
        return [schema.steer_label(steer_overrides(cfg.steer, schema))] * len(prompts)
    if cfg.label != FROM_DATA:
        try:
            schema.parse_label(cfg.label)
        except LabelError as err:
            raise UserError(f"label={cfg.label}: {err}") from None
        return [cfg.label] * len(prompts)
    labels = []
    for p in prompts:
        if not p.reference_label:
            raise DataError(
                path, "label=from_data needs a conversation that ends with a labelled assistant turn", p.line
            )
        try:
            schema.parse_label(p.reference_label)
        except LabelError as err:
            raise DataError(path, f"label=from_data: {err}", p.line, "conversations") from None
        labels.append(p.reference_label)
    return labels


def read_prompts(path: Path, schema: AttributeSchema) -> list[Prompt]:
    """One :class:`Prompt` per line of a prompt file (see ``conf/generate.yaml``)."""
    from nemo_steerlm.data.formats import parse_sft_object
    from nemo_steerlm.models.generation import prompt_conversation

    out = []
    for line, obj in read_jsonl(path):
        if "conversations" in obj:
            full = parse_sft_object(obj, schema, str(path), line)
            conv, reference = prompt_conversation(full)
            label = full.turns[-1].label if reference is not None else None
            out.append(Prompt(str(line - 1), line, conv, reference, label))
            continue
        if "turns" in obj:
            turns = obj["turns"]
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
                raise DataError(path, "expected a non-empty list of strings (MT-Bench question)", line, "turns")
            conv = Conversation([Turn(turns[0], USER_ROLE)])
            out.append(Prompt(str(obj.get("question_id", line - 1)), line, conv))
            continue
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(path, "missing, not a string or empty (or give 'conversations' / 'turns')", line, "prompt")
        conv = Conversation([Turn(prompt, USER_ROLE)])
        if "system" in obj:
            if not isinstance(obj["system"], str):
                raise DataError(path, "not a string", line, "system")
            conv.system = obj["system"]
        out.append(Prompt(str(obj.get("id", line - 1)), line, conv))
    return out


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Generates a response per prompt and writes ``generations.jsonl``."""
    from nemo_steerlm.models.checkpoint import check_kind, restore_nemo
    from nemo_steerlm.models.generation import generate_full

    model_path = require_path(cfg, "model", "a SteerLM SFT model .nemo made by train-sft (model=PATH)")
    meta = check_kind(model_path, "sft")
    schema = AttributeSchema(tuple(meta["attributes"]), *meta["value_range"])
    data = require_path(cfg, "data", "a prompt JSONL file")
    prompts = read_prompts(data, schema)
    if cfg.limit is not None:
        prompts = prompts[: cfg.limit]
    labels = steering_labels(cfg, schema.subset(meta.get("labelled_attributes") or schema.names), prompts, data)
    params = sampling_params(cfg.sampling, "sampling")
    model = restore_nemo(model_path, "sft", inference_layout(cfg.layout, 1))
    results = generate_full(model, [p.conversation for p in prompts], labels, params)
    lines = [_record(i, *args) for i, args in enumerate(zip(prompts, labels, results, strict=True))]
    target = output_dir / OUTPUT_NAME
    if is_global_rank_zero():
        write_jsonl_atomic(target, lines)
    words = [len(r.text.split()) for r in results]
    return {
        "output": str(target),
        "prompts": len(results),
        "label": FROM_DATA if cfg.label == FROM_DATA else (labels[0] if labels else None),
        "stop_reasons": {k: sum(r.stop_reason == k for r in results) for k in ("stop_text", "eos", "max_new_tokens")},
        "prompts_truncated": sum(r.prompt_truncated for r in results),
        "mean_response_words": sum(words) / len(words) if words else 0.0,
        "layout": model.model_summary()["layout"],
    }


def _record(index: int, prompt: Prompt, label: str, result: Any) -> str:
    obj: dict[str, Any] = {
        "index": index,
        "id": prompt.ident,
        "prompt": prompt.conversation.turns[-1].value,
        "turns": len(prompt.conversation.turns),
        "label": label,
        "response": result.text,
        "stop_reason": result.stop_reason,
        "prompt_tokens": len(result.prompt_ids),
        "prompt_truncated": result.prompt_truncated,
        "response_token_ids": result.token_ids,
    }
    if prompt.reference is not None:
        obj["reference"] = prompt.reference
    return dump_json_line(obj)


main = stage_main("generate", body, relaunch=True, argv=accept_steer_overrides)


if __name__ == "__main__":
    main()
