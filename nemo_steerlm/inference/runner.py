"""The model-facing side of ``evaluate``: runs the SteerLM SFT model (and the APM) for each evaluation.

Each function takes models and plain settings, calls the model-agnostic metric modules of this package, and
returns the section of the results dict that :mod:`nemo_steerlm.evaluation.report` renders. (This module runs models,
so it lives in the inference layer; :mod:`nemo_steerlm.evaluation` stays free of torch and megatron.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nemo_steerlm.attributes import ASSISTANT_ROLE, USER_ROLE, AttributeSchema
from nemo_steerlm.data.datasets import SFTSample
from nemo_steerlm.data.formats import read_sft_jsonl
from nemo_steerlm.data.template import Conversation, Turn, regression_text, render_prompt
from nemo_steerlm.evaluation import conditioning, mt_bench, steerability, truthfulqa
from nemo_steerlm.evaluation.perplexity import perplexity
from nemo_steerlm.megatron import parallel
from nemo_steerlm.models.generation import SamplingParams, generate_full, prompt_conversation

if TYPE_CHECKING:
    from nemo_steerlm.models.apm import AttributePredictionModel
    from nemo_steerlm.models.sft import SteerLMSFTModel


def distinct_prompts(conversations: Sequence[Conversation]) -> list[Conversation]:
    """The conversations to answer (trailing assistant turn removed), each distinct prompt once, in input order."""
    seen: set[tuple[str, ...]] = set()
    out: list[Conversation] = []
    for conv in conversations:
        prompt, _ = prompt_conversation(conv)
        key = tuple(t.value for t in prompt.turns)
        if key not in seen:
            seen.add(key)
            out.append(prompt)
    return out


def apm_scores(
    apm: AttributePredictionModel, conversations: Sequence[Conversation], responses: Sequence[str]
) -> np.ndarray:
    """The APM's raw predictions ``[N, A]`` for each response as the next assistant turn of its conversation."""
    texts = [regression_text(c, r) for c, r in zip(conversations, responses, strict=True)]
    return apm.predict_texts(texts)[0]


def run_steerability(
    sft: SteerLMSFTModel,
    apm: AttributePredictionModel | None,
    prompts: Sequence[Conversation],
    attributes: Sequence[str],
    values: Sequence[int],
    params: SamplingParams,
    out_dir: Path,
    reference_file: Path | None = None,
    base: Mapping[str, int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sweeps each attribute over ``values`` (others at the default label, ``base`` on it) and measures what changed.

    With ``reference_file`` (the SFT's labelled training conversations), each attribute's summary also carries the
    same measures of its responses at their labels (``data_reference``, with the ``file``): what imitating the
    training data would reach; and how often that data holds each requested value and label (``coverage``, see
    :func:`steerability.label_coverage`).

    Returns the steerability results and one record per generated response (for ``steer_responses.jsonl``).
    """
    schema: AttributeSchema = sft.labelled_schema
    sweeps: dict[str, list[steerability.SteerSample]] = {}
    records: list[dict[str, Any]] = []
    sweep_labels = {a: steerability.sweep_labels(schema, a, list(values), base) for a in attributes}
    for attribute in attributes:
        labels = sweep_labels[attribute]
        convs = [c for _ in labels for c in prompts]
        per_prompt = [label for label in labels for _ in prompts]
        gens = generate_full(sft, convs, per_prompt, params)
        texts = [g.text for g in gens]
        preds = apm_scores(apm, convs, texts)[:, apm.schema.index(attribute)] if apm is not None else None
        requested = [v for v in values for _ in prompts]
        sweeps[attribute] = [
            steerability.SteerSample(
                float(req), g.text, None if preds is None else float(preds[i]), len(g.token_ids), i % len(prompts)
            )
            for i, (req, g) in enumerate(zip(requested, gens, strict=True))
        ]
        records += [
            {
                "attribute": attribute,
                "requested": req,
                "label": lab,
                "prompt_index": i % len(prompts),
                "prompt": prompts[i % len(prompts)].turns[-1].value,
                "response": g.text,
                "tokens": len(g.token_ids),
                "stop_reason": g.stop_reason,
                "apm_prediction": None if preds is None else round(float(preds[i]), 6),
            }
            for i, (req, lab, g) in enumerate(zip(requested, per_prompt, gens, strict=True))
        ]
    results = steerability.compute_steerability(sweeps)
    if reference_file is not None:
        reference = read_sft_jsonl(reference_file, sft.schema)
        for attribute in attributes:
            ref = steerability.data_reference(reference, sft.schema, attribute, values)
            coverage = steerability.label_coverage(reference, sft.schema, sweep_labels[attribute])
            results[attribute]["data_reference"] = {**ref, "coverage": coverage, "file": str(reference_file)}
    steerability.plot_steerability(results, out_dir / steerability.PLOT_FILE)
    return results, records


def mt_bench_generate_fn(sft: SteerLMSFTModel, label: str, params: SamplingParams) -> mt_bench.GenerateFn:
    """Adapts the SFT model to MT-Bench's ``generate_fn(conversations) -> responses`` (every turn steered)."""

    def generate_fn(conversations: Sequence[Sequence[tuple[str, str]]]) -> list[str]:
        convs = [
            Conversation([Turn(text, role, label if role == ASSISTANT_ROLE else None) for role, text in conv])
            for conv in conversations
        ]
        return [g.text for g in generate_full(sft, convs, label, params)]

    return generate_fn


def run_mt_bench(
    sft: SteerLMSFTModel,
    label: str,
    params: SamplingParams,
    answer_file: Path,
    model_id: str,
    judge: mt_bench.OpenAIChatJudge | None = None,
) -> dict[str, Any]:
    """Answers all MT-Bench questions (both turns) in FastChat's ``model_answer`` format; grades them with ``judge``.

    The judge (an OpenAI-compatible endpoint with FastChat's judge prompts) runs on global rank 0 only.
    """
    questions = mt_bench.load_questions()
    answers = mt_bench.answer_questions(questions, mt_bench_generate_fn(sft, label, params), model_id, answer_file)
    verdicts = None
    if judge is not None and parallel.is_global_rank_zero():
        verdicts = mt_bench.judge_answers(questions, answers, judge, judge_model=judge.model)
    return {"answer_file": str(answer_file), "n_questions": len(questions), "judge": verdicts}


def run_truthfulqa(sft: SteerLMSFTModel, label: str, max_questions: int | None) -> dict[str, Any]:
    """TruthfulQA MC1/MC2 by log-likelihood of each answer after the SteerLM inference prompt."""
    items = truthfulqa.load_truthfulqa()
    items = items[:max_questions] if max_questions else items

    def prompt_fn(question: str) -> str:
        return render_prompt(Conversation([Turn(question, USER_ROLE, None)]), label)

    return truthfulqa.evaluate_truthfulqa(items, sft.score_continuations, prompt_fn, batch_size=256)


def run_perplexity(sft: SteerLMSFTModel, sft_jsonl: Path) -> dict[str, Any]:
    """Perplexity of the held-out responses (the SFT loss positions) of an SFT JSONL file."""
    dataset = sft.sft_dataset(str(sft_jsonl))
    samples: list[SFTSample] = dataset.samples
    scored = sft.score_samples(samples)
    result = perplexity([s[0] for s in scored], [int(s[1]) for s in scored])
    result["file"], result["truncated"] = str(sft_jsonl), dataset.num_truncated
    return result


def run_conditioning(sft: SteerLMSFTModel, reference_file: Path, max_groups: int) -> dict[str, Any]:
    """Teacher-forced label → response selection on the SFT's training prompts with differently labelled responses.

    See :mod:`nemo_steerlm.evaluation.conditioning`; ``reference_file`` is the SFT's training JSONL.
    """
    groups, skipped = conditioning.label_groups(read_sft_jsonl(reference_file, sft.schema), max_groups)
    nll = sft.score_conversations([c for g in groups for c in g.candidates()])
    result = conditioning.selection_accuracy(groups, nll)
    return {**result, "skipped_unlabelled": skipped, "max_groups": max_groups, "file": str(reference_file)}
