"""SteerLM bootstrapping (the paper's step after the first SFT): sample, annotate, train again.

For every distinct training prompt the SFT model answers ``samples_per_prompt`` times, each time under a label drawn
from the labels its training data holds (so each answer is steered somewhere the model has seen); the attribute
model then labels what was actually written. The result is new SFT data in the reference format whose labels
describe the model's own responses, which a second ``train-sft`` learns from (NeMo-Aligner leaves this step out).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nemo_steerlm.attributes import ASSISTANT_ROLE
from nemo_steerlm.data.template import Conversation, Turn
from nemo_steerlm.inference.annotation import annotate_conversations
from nemo_steerlm.models.generation import SamplingParams, generate_full, prompt_conversation

if TYPE_CHECKING:
    from nemo_steerlm.models.apm import AttributePredictionModel
    from nemo_steerlm.models.sft import SteerLMSFTModel


@dataclass(frozen=True)
class BootstrapStats:
    """What one bootstrap round did."""

    prompts: int
    requested: int
    written: int
    empty_skipped: int
    label_pool: int


def bootstrap_prompts(conversations: Sequence[Conversation]) -> tuple[list[Conversation], list[str]]:
    """The distinct prompts (conversation before a final assistant turn, first seen order) and the label pool.

    The pool is the distinct labels of the final assistant turns, in first-seen order (unlabelled turns add none).
    """
    seen: set[tuple] = set()
    prompts: list[Conversation] = []
    pool: dict[str, None] = {}
    for conv in conversations:
        prompt, reference = prompt_conversation(conv)
        if reference is None:
            continue
        if conv.turns[-1].label:
            pool.setdefault(conv.turns[-1].label, None)
        key = prompt.key()
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts, list(pool)


def bootstrap_round(
    sft: SteerLMSFTModel,
    apm: AttributePredictionModel,
    conversations: Sequence[Conversation],
    samples_per_prompt: int,
    params: SamplingParams,
    seed: int,
) -> tuple[list[str], BootstrapStats]:
    """Samples, annotates and returns new SFT JSONL lines (call on every rank of both models' layout).

    Args:
        sft: the SteerLM SFT model that answers.
        apm: the attribute prediction model that labels the answers.
        conversations: the SFT training conversations (prompts and label pool).
        samples_per_prompt: answers per prompt, each under its own label drawn from the pool.
        params: sampling settings (the seed there seeds the tokens; ``seed`` here the labels).
        seed: seed of the label draw.

    Returns:
        ``(lines, stats)``: one reference SFT line per non-empty answer, labelled by the APM.
    """
    prompts, pool = bootstrap_prompts(conversations)
    if not pool:
        raise ValueError("the training data holds no labelled assistant turn: nothing to steer with")
    rng = random.Random(seed)
    asks = [(p, rng.choice(pool)) for p in prompts for _ in range(samples_per_prompt)]
    gens = generate_full(sft, [p for p, _ in asks], [label for _, label in asks], params)
    answered = [
        Conversation([*p.turns, Turn(g.text.strip(), ASSISTANT_ROLE, None)], p.system, p.mask, p.type)
        for (p, _), g in zip(asks, gens, strict=True)
        if g.text.strip()
    ]
    lines, _, _ = annotate_conversations(apm, answered)
    stats = BootstrapStats(len(prompts), len(asks), len(lines), len(asks) - len(answered), len(pool))
    return lines, stats
