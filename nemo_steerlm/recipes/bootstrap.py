"""Stage ``bootstrap``: one SteerLM bootstrap round, SFT data for a second ``train-sft``.

The SFT model answers its training prompts at varied labels, the attribute model labels the answers, and the new
conversations are written in the reference SFT format.

Run ``nemo-steerlm bootstrap model=SFT.nemo apm=APM.nemo data=TRAIN.jsonl output_dir=D [overrides]``. Writes
``D/train.bootstrap.jsonl`` (reference SFT format; with ``include_original`` the training data comes first).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.data.io import write_jsonl_atomic
from nemo_steerlm.errors import UserError
from nemo_steerlm.recipes.common import (
    is_global_rank_zero,
    require_path,
    sampling_params,
    stage_main,
)
from nemo_steerlm.stages import stage

OUTPUT_NAME = str(stage("bootstrap").produces)


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Samples, annotates, writes ``train.bootstrap.jsonl``; returns the counts and the new labels' spread."""
    from nemo_steerlm.data.formats import read_sft_jsonl, sft_line
    from nemo_steerlm.inference.bootstrap import bootstrap_round
    from nemo_steerlm.models.checkpoint import check_kind, restore_nemo

    sft_path = require_path(cfg, "model", "the SteerLM SFT model .nemo to bootstrap from (model=PATH)")
    apm_path = require_path(cfg, "apm", "the attribute prediction model .nemo that labels the answers (apm=PATH)")
    data = require_path(cfg, "data", "the SFT training JSONL (its prompts and labels)")
    check_kind(sft_path, "sft")
    check_kind(apm_path, "apm")
    if cfg.samples_per_prompt < 1:
        raise UserError(f"samples_per_prompt={cfg.samples_per_prompt}: must be at least 1")
    params = sampling_params(cfg.sampling, "sampling")
    sft, apm = restore_nemo(sft_path, "sft"), restore_nemo(apm_path, "apm")
    conversations = read_sft_jsonl(data, sft.schema)
    if cfg.max_prompts is not None:
        conversations = _first_prompts(conversations, cfg.max_prompts)
    try:
        lines, stats = bootstrap_round(sft, apm, conversations, cfg.samples_per_prompt, params, cfg.seed)
    except ValueError as err:
        raise UserError(f"data={data}: {err}") from None
    original = [sft_line(c) for c in conversations] if cfg.include_original else []
    target = output_dir / OUTPUT_NAME
    if is_global_rank_zero():
        write_jsonl_atomic(target, [*original, *lines])
    labels = Counter(_final_label(line) for line in lines)
    return {
        "output": str(target),
        **asdict(stats),
        "original_rows": len(original),
        "rows": len(original) + len(lines),
        "new_labels_most_common": labels.most_common(5),
    }


def _first_prompts(conversations: list[Any], n: int) -> list[Any]:
    """The conversations of the first ``n`` distinct prompts (all their responses)."""
    keep: dict[tuple, None] = {}
    out = []
    for conv in conversations:
        key = tuple(t.value for t in conv.turns[:-1])
        if key not in keep and len(keep) >= n:
            continue
        keep.setdefault(key, None)
        out.append(conv)
    return out


def _final_label(line: str) -> str:
    import json

    return str(json.loads(line)["conversations"][-1]["label"])


main = stage_main("bootstrap", body)


if __name__ == "__main__":
    main()
