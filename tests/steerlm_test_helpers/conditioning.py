"""Data for the conditioning checks, built from the shipped HelpSteer rows: does the SFT label steer the response?

* memorisation: prompts that each have several responses with different labels; a model that listens to its label
  returns, for each label, the response that carried it;
* a toy length task: each response cut to a length fixed by its verbosity label, trained on some prompts and asked
  of prompts the model never saw.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.formats import sft_line
from nemo_steerlm.data.sources import helpsteer_to_conversation
from nemo_steerlm.data.template import Conversation, Turn
from nemo_steerlm.resources import helpsteer_sample_path

HELPSTEER = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
#: verbosity level -> words kept of the response in the toy task
TOY_WORDS = {0: 4, 1: 12, 2: 28, 3: 60}


def _rows_by_prompt() -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for line in helpsteer_sample_path().read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by.setdefault(row["prompt"], []).append(row)
    return by


def memorisation_rows(prompts: int = 12, per_prompt: int = 4, max_words: int = 120) -> list[Conversation]:
    """``prompts`` × ``per_prompt`` HelpSteer conversations: per prompt, responses whose five labels all differ.

    The first prompts in file order that have ``per_prompt`` responses of at most ``max_words`` words with pairwise
    different labels; the responses keep their own human labels.
    """
    schema = AttributeSchema()
    out: list[Conversation] = []
    for rows in _rows_by_prompt().values():
        chosen, labels = [], set()
        for row in rows:
            label = tuple(row[k] for k in HELPSTEER)
            if label not in labels and len(row["response"].split()) <= max_words:
                chosen.append(row)
                labels.add(label)
        if len(chosen) >= per_prompt:
            out += [helpsteer_to_conversation(r, schema) for r in chosen[:per_prompt]]
        if len(out) == prompts * per_prompt:
            return out
    raise AssertionError(f"the sample has fewer than {prompts} prompts with {per_prompt} such responses")


def toy_length_rows(train_prompts: int, test_prompts: int) -> tuple[list[Conversation], list[Conversation]]:
    """The toy task: a response cut to ``TOY_WORDS[v]`` words under the label ``verbosity:v``, for each level ``v``.

    Prompts with a response long enough are taken in file order: the first ``train_prompts`` give every such response
    at every level (the training set), the next ``test_prompts`` their longest response at every level (prompts the
    model never saw; the response is only a reference, the label is what is asked).
    """
    need = max(TOY_WORDS.values())
    usable = [
        (p, [r for r in rows if len(r["response"].split()) >= need])
        for p, rows in _rows_by_prompt().items()
        if any(len(r["response"].split()) >= need for r in rows)
    ]
    if len(usable) < train_prompts + test_prompts:
        raise AssertionError(f"only {len(usable)} prompts have a response long enough for the toy task")

    def rows(part: Sequence[tuple[str, list[dict]]], longest_only: bool) -> list[Conversation]:
        out = []
        for prompt, responses in part:
            chosen = [max(responses, key=lambda r: len(r["response"].split()))] if longest_only else responses
            for row in chosen:
                words = row["response"].split()
                for level, n in TOY_WORDS.items():
                    reply = Turn(" ".join(words[:n]), "Assistant", f"verbosity:{level}")
                    out.append(Conversation([Turn(prompt, "User"), reply]))
        return out

    return rows(usable[:train_prompts], False), rows(usable[train_prompts : train_prompts + test_prompts], True)


def write_sft(path: Path, conversations: Sequence[Conversation]) -> Path:
    """Writes conversations as reference SFT JSONL."""
    path.write_text("".join(sft_line(c) + "\n" for c in conversations), encoding="utf-8")
    return path


def closest(text: str, candidates: Sequence[str]) -> int:
    """Index of the candidate most similar to ``text`` (difflib ratio over the first 400 characters)."""
    scores = [difflib.SequenceMatcher(None, text[:400], c[:400]).ratio() for c in candidates]
    return max(range(len(candidates)), key=scores.__getitem__)
