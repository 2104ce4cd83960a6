"""Does the SFT model listen to its labels? Teacher-forced label → response selection on its own training data.

Training prompts that carry several responses with different labels are the cleanest test of conditioning: under
the label of response ``i``, the model should find response ``i`` more likely than its siblings. For every such group
(:func:`label_groups`) the caller scores each response under each label (summed negative log-likelihood of the
response tokens, the prompt policy of training applied) and :func:`selection_accuracy` counts how often the response
that carries the label ranks first under it.

Chance is exact: a model that ignores its labels ranks the same response first under every label of a group, so it
is right once per group of ``k`` labels (``1/k``); the report gives that level next to the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nemo_steerlm.attributes import ASSISTANT_ROLE
from nemo_steerlm.data.template import Conversation, Turn


@dataclass(frozen=True)
class LabelGroup:
    """One prompt (the conversation before its final assistant turn) and its differently labelled responses."""

    prompt: Conversation
    labels: tuple[str, ...]
    responses: tuple[str, ...]

    def candidates(self) -> list[Conversation]:
        """Every response under every label, label-major: ``[label 0 × responses..., label 1 × responses..., ...]``."""
        return [
            Conversation(
                [*self.prompt.turns, Turn(response, ASSISTANT_ROLE, label)],
                self.prompt.system,
                self.prompt.mask,
                self.prompt.type,
            )
            for label in self.labels
            for response in self.responses
        ]


def label_groups(conversations: Sequence[Conversation], max_groups: int) -> tuple[list[LabelGroup], int]:
    """Groups conversations by prompt; keeps prompts whose final assistant turns hold at least two different labels.

    Per prompt, the first response of each distinct label is kept (a label held by two responses cannot tell them
    apart). Groups come in order of their prompt's first appearance; at most ``max_groups`` are returned.

    Returns:
        ``(groups, skipped)``: ``skipped`` counts conversations that do not end with a labelled assistant turn.
    """
    by_prompt: dict[tuple, dict[str, str]] = {}
    prompts: dict[tuple, Conversation] = {}
    skipped = 0
    for conv in conversations:
        last = conv.turns[-1] if conv.turns else None
        if last is None or last.role != ASSISTANT_ROLE or not last.label:
            skipped += 1
            continue
        prompt = Conversation(list(conv.turns[:-1]), conv.system, conv.mask, conv.type)
        key = prompt.key()
        prompts.setdefault(key, prompt)
        by_prompt.setdefault(key, {}).setdefault(last.label, last.value)
    groups = [
        LabelGroup(prompts[key], tuple(chosen), tuple(chosen.values()))
        for key, chosen in by_prompt.items()
        if len(chosen) >= 2
    ]
    return groups[:max_groups], skipped


def selection_accuracy(groups: Sequence[LabelGroup], nll: Sequence[float]) -> dict[str, float | int | None]:
    """How often the response carrying a label has the lowest NLL under that label, against chance.

    Args:
        groups: the groups scored.
        nll: summed NLL of every candidate, in the order of the groups' :meth:`LabelGroup.candidates`.

    Returns:
        ``groups``, ``selections`` (labels tried), ``correct``, ``accuracy`` and ``chance`` (a label-blind model's
        expected accuracy: one right per group).
    """
    expected = sum(len(g.labels) ** 2 for g in groups)
    if expected != len(nll):
        raise ValueError(f"got {len(nll)} scores for {expected} candidates")
    at, correct, selections, chance = 0, 0, 0, 0.0
    for group in groups:
        k = len(group.labels)
        for i in range(k):
            row = nll[at + i * k : at + (i + 1) * k]
            correct += int(min(range(k), key=row.__getitem__) == i)
        at += k * k
        selections += k
        chance += 1.0
    return {
        "groups": len(groups),
        "selections": selections,
        "correct": correct,
        "accuracy": correct / selections if selections else None,
        "chance": chance / selections if selections else None,
    }
