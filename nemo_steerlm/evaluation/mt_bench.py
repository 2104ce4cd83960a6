"""MT-Bench: answer the 80 two-turn questions in FastChat's format, and (optionally) grade them with an LLM judge.

The question set, the judge prompts and GPT-4's reference answers are shipped in
``nemo_steerlm/resources/eval/mt_bench`` (Apache-2.0, LMSYS FastChat ``llm_judge`` data).

Answering follows ``fastchat/llm_judge/gen_model_answer.py``: turn 1 is asked alone, turn 2 is asked with the model's
own first answer in the history; one line per question ``{"question_id", "answer_id", "model_id", "choices":
[{"index": 0, "turns": [answer_1, answer_2]}], "tstamp"}`` written with ``json.dumps`` (ASCII-escaped, as FastChat),
sorted by ``question_id`` (FastChat's ``reorg_answer_file``). The file can be judged by FastChat's
``gen_judgment.py`` directly.

Judging follows ``fastchat/llm_judge/common.py`` in single-answer grading mode: ``single-v1`` (turn 1) and
``single-v1-multi-turn`` (turn 2), their ``single-math-v1*`` variants with the reference answer for the math,
reasoning and coding categories; the verdict is parsed from ``[[N]]`` with a ``[N]`` fallback and is -1 when neither
is found. Unlike FastChat's ``show_result.py``, which silently drops -1 scores, we keep them in the per-question list,
count them as failed, and leave them out of the averages. The judge client talks to any OpenAI-compatible
``/chat/completions`` endpoint with the standard library only; nothing calls it unless a user configures it.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nemo_steerlm.attributes import ASSISTANT_ROLE, USER_ROLE
from nemo_steerlm.data.io import write_text_atomic
from nemo_steerlm.errors import UserError

RESOURCE_DIR = Path(__file__).resolve().parent.parent / "resources" / "eval" / "mt_bench"
QUESTION_FILE = RESOURCE_DIR / "question.jsonl"
JUDGE_PROMPT_FILE = RESOURCE_DIR / "judge_prompts.jsonl"
REFERENCE_ANSWER_FILE = RESOURCE_DIR / "reference_answer" / "gpt-4.jsonl"

NEED_REF_CATS: tuple[str, ...] = ("math", "reasoning", "coding")
SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
API_ERROR_OUTPUT = "$ERROR$"

Conversation = list[tuple[str, str]]
GenerateFn = Callable[[list[Conversation]], Sequence[str]]
ChatFn = Callable[[list[dict[str, str]]], str]


def _read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
    return rows


def load_questions(
    path: str | os.PathLike[str] | None = None, begin: int | None = None, end: int | None = None
) -> list[dict[str, Any]]:
    """Loads MT-Bench questions (``question_id``, ``category``, ``turns``), by default the shipped 80.

    Args:
        path: a FastChat ``question.jsonl``; ``None`` for the shipped file.
        begin: first question index to keep (FastChat's ``--question-begin``).
        end: one past the last index to keep.

    Returns:
        The question dicts, in file order.
    """
    path = QUESTION_FILE if path is None else path
    questions = []
    for lineno, row in _read_jsonl(path):
        if not isinstance(row.get("question_id"), int):
            raise UserError(f"{path}:{lineno}: field `question_id` must be an integer")
        if not isinstance(row.get("category"), str):
            raise UserError(f"{path}:{lineno}: field `category` must be a string")
        turns = row.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise UserError(f"{path}:{lineno}: field `turns` must be a non-empty list of strings")
        questions.append(row)
    return questions[begin:end]


def load_judge_prompts(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Judge prompts by name (``single-v1``, ``single-math-v1-multi-turn``, ...), by default the shipped ones."""
    path = JUDGE_PROMPT_FILE if path is None else path
    prompts = {}
    for lineno, row in _read_jsonl(path):
        missing = {"name", "type", "system_prompt", "prompt_template", "output_format"} - row.keys()
        if missing:
            raise UserError(f"{path}:{lineno}: judge prompt lacks fields {sorted(missing)}")
        prompts[row["name"]] = row
    return prompts


def load_reference_answers(path: str | os.PathLike[str] | None = None) -> dict[int, list[str]]:
    """Reference answer turns by question id, by default GPT-4's (the ones FastChat's judge uses)."""
    path = REFERENCE_ANSWER_FILE if path is None else path
    return {row["question_id"]: list(row["choices"][0]["turns"]) for _, row in _read_jsonl(path)}


def shortuuid_like(rng: random.Random, length: int = 22) -> str:
    """A random id in the style of ``shortuuid.uuid()`` (22 characters of its 57-letter alphabet)."""
    return "".join(rng.choice(SHORTUUID_ALPHABET) for _ in range(length))


def _generate_checked(generate_fn: GenerateFn, conversations: list[Conversation]) -> list[str]:
    responses = list(generate_fn(conversations))
    if len(responses) != len(conversations):
        raise ValueError(f"generate_fn returned {len(responses)} responses for {len(conversations)} conversations")
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise ValueError(f"generate_fn response {i} is a {type(response).__name__}, expected str")
    return responses


def answer_questions(
    questions: Sequence[Mapping[str, Any]],
    generate_fn: GenerateFn,
    model_id: str,
    answer_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    max_turns: int | None = None,
    clock: Callable[[], float] = time.time,
) -> list[dict[str, Any]]:
    """Answers MT-Bench questions turn by turn and returns (and optionally writes) FastChat ``model_answer`` records.

    All first turns go to ``generate_fn`` in one call, then all second turns, each second-turn conversation holding
    the question's first turn and the model's own first answer. Roles are ``attributes.USER_ROLE`` and
    ``attributes.ASSISTANT_ROLE``.

    Args:
        questions: MT-Bench question dicts (see :func:`load_questions`).
        generate_fn: ``generate_fn(list_of_conversations) -> list_of_responses``; a conversation is a list of
            ``(role, text)`` turns ending with a user turn.
        model_id: the ``model_id`` written in each record (FastChat names the answer file after it).
        answer_file: where to write the JSONL (atomically); ``None`` to only return the records.
        seed: seed of the ``answer_id`` generator, so reruns write identical ids.
        max_turns: answer at most this many turns per question (``None``: all).
        clock: source of the ``tstamp`` values.

    Returns:
        The records, sorted by ``question_id``.
    """
    ordered = sorted(questions, key=lambda q: q["question_id"])
    histories: list[Conversation] = [[] for _ in ordered]
    answers: list[list[str]] = [[] for _ in ordered]
    n_turns = max(len(q["turns"]) for q in ordered) if ordered else 0
    n_turns = n_turns if max_turns is None else min(n_turns, max_turns)
    for turn in range(n_turns):
        active = [i for i, q in enumerate(ordered) if turn < len(q["turns"])]
        convs = [histories[i] + [(USER_ROLE, ordered[i]["turns"][turn])] for i in active]
        for i, conv, response in zip(active, convs, _generate_checked(generate_fn, convs), strict=True):
            histories[i] = conv + [(ASSISTANT_ROLE, response)]
            answers[i].append(response)
    rng = random.Random(seed)
    records = [
        {
            "question_id": q["question_id"],
            "answer_id": shortuuid_like(rng),
            "model_id": model_id,
            "choices": [{"index": 0, "turns": turns}],
            "tstamp": clock(),
        }
        for q, turns in zip(ordered, answers, strict=True)
    ]
    if answer_file is not None:
        write_text_atomic(answer_file, "".join(json.dumps(r) + "\n" for r in records))
    return records


def parse_rating(judgment: str) -> float:
    """The score of a single-answer judgment: ``[[N]]``, else the first ``[N]``, else -1 (FastChat's rule)."""
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    return float(match.group(1)) if match else -1.0


def judge_prompt_name(category: str, multi_turn: bool) -> str:
    """The FastChat single-grading prompt for a question category and turn."""
    name = "single-math-v1" if category in NEED_REF_CATS else "single-v1"
    return name + "-multi-turn" if multi_turn else name


def build_judge_messages(
    question: Mapping[str, Any],
    answer_turns: Sequence[str],
    prompt: Mapping[str, Any],
    reference_turns: Sequence[str] | None = None,
    multi_turn: bool = False,
) -> list[dict[str, str]]:
    """OpenAI chat messages ``[system, user]`` for one judgment, filled as FastChat's ``run_judge_single`` does.

    Args:
        question: the MT-Bench question.
        answer_turns: the model's answers (at least 2 when ``multi_turn``).
        prompt: a judge prompt dict (see :func:`load_judge_prompts`).
        reference_turns: reference answers, for the ``*-math-*`` prompts.
        multi_turn: grade the second turn in the context of the first.

    Returns:
        The messages list.
    """
    kwargs = {}
    if reference_turns is not None:
        second = reference_turns[1] if len(reference_turns) > 1 else ""
        kwargs = {"ref_answer_1": reference_turns[0], "ref_answer_2": second}
    if multi_turn:
        user = prompt["prompt_template"].format(
            question_1=question["turns"][0],
            question_2=question["turns"][1],
            answer_1=answer_turns[0],
            answer_2=answer_turns[1],
            **kwargs,
        )
    else:
        user = prompt["prompt_template"].format(question=question["turns"][0], answer=answer_turns[0], **kwargs)
    return [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


class JudgeRequestError(RuntimeError):
    """The judge endpoint did not answer usefully within the allowed retries (the judgment counts as failed)."""


class OpenAIChatJudge:
    """Minimal client for an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint (urllib only).

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        model: judge model name sent in the request (FastChat's MT-Bench uses ``gpt-4``).
        api_key_env: name of the environment variable holding the API key; ``None`` to send no key.
        timeout_s: per-request socket timeout.
        max_retries: attempts after the first one on timeouts, connection errors, HTTP 429 and 5xx.
        retry_sleep_s: pause between attempts.
        temperature: sampling temperature (FastChat uses 0).
        max_tokens: completion budget (FastChat uses 2048).
        sleep: the pause function (tests pass a no-op).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        retry_sleep_s: float = 5.0,
        temperature: float = 0.0,
        max_tokens: int = 2048,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = None
        if api_key_env is not None:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise UserError(f"environment variable {api_key_env} (the judge's `api_key_env`) is not set")
        self.timeout_s, self.max_retries, self.retry_sleep_s = timeout_s, max_retries, retry_sleep_s
        self.temperature, self.max_tokens, self.sleep = temperature, max_tokens, sleep

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - user-set URL
            payload = json.loads(response.read().decode("utf-8"))
        content = payload["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"`choices[0].message.content` is {type(content).__name__}, not a string")
        return content

    def __call__(self, messages: list[dict[str, str]]) -> str:
        """Sends ``messages`` and returns the judge's reply text.

        Raises:
            JudgeRequestError: when every attempt failed with a retryable error.
            urllib.error.HTTPError: at once on a 4xx other than 429 (wrong URL, model or key: fix the config).
        """
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "n": 1,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode("utf-8")
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.sleep(self.retry_sleep_s)
            try:
                return self._post(body)
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    raise
                last_error = err
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, KeyError, TypeError) as err:
                last_error = err
        raise JudgeRequestError(f"{self.url}: {self.max_retries + 1} attempts failed, last: {last_error!r}")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise_judgments(judgments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Averages of valid scores (score != -1) per turn, per category and overall; failures counted, not dropped.

    Args:
        judgments: records with ``question_id``, ``category``, ``turn`` and ``score``.

    Returns:
        ``{"overall", "per_turn": {turn: mean}, "per_category": {cat: {"mean", "turn_1", "turn_2", "n_failed"}},
        "n_judgments", "n_failed", "failed": [{"question_id", "turn"}]}``; a mean is ``None`` without valid scores.
    """
    valid = [j for j in judgments if j["score"] != -1]
    failed = [{"question_id": j["question_id"], "turn": j["turn"]} for j in judgments if j["score"] == -1]
    per_category: dict[str, Any] = {}
    for category in sorted({j["category"] for j in judgments}):
        mine = [j for j in valid if j["category"] == category]
        entry: dict[str, Any] = {"mean": _mean([j["score"] for j in mine])}
        for turn in sorted({j["turn"] for j in judgments}):
            entry[f"turn_{turn}"] = _mean([j["score"] for j in mine if j["turn"] == turn])
        entry["n_failed"] = sum(1 for j in judgments if j["category"] == category and j["score"] == -1)
        per_category[category] = entry
    per_turn = {
        str(turn): _mean([j["score"] for j in valid if j["turn"] == turn])
        for turn in sorted({j["turn"] for j in judgments})
    }
    return {
        "overall": _mean([j["score"] for j in valid]),
        "per_turn": per_turn,
        "per_category": per_category,
        "n_judgments": len(judgments),
        "n_failed": len(failed),
        "failed": failed,
    }


def _judge_one(question, answer_turns, turn, chat_fn, prompts, references, judge_model) -> dict[str, Any]:
    name = judge_prompt_name(question["category"], multi_turn=turn == 2)
    reference = None
    if question["category"] in NEED_REF_CATS:
        if question["question_id"] not in references:
            raise ValueError(f"no reference answer for question {question['question_id']} ({question['category']})")
        reference = references[question["question_id"]]
    messages = build_judge_messages(question, answer_turns, prompts[name], reference, multi_turn=turn == 2)
    error = None
    try:
        judgment = chat_fn(messages)
    except JudgeRequestError as err:
        judgment, error = API_ERROR_OUTPUT, str(err)
    return {
        "question_id": question["question_id"],
        "category": question["category"],
        "turn": turn,
        "judge": [judge_model, name],
        "user_prompt": messages[1]["content"],
        "judgment": judgment,
        "score": parse_rating(judgment) if error is None else -1.0,
        "error": error,
        "tstamp": time.time(),
    }


def judge_answers(
    questions: Sequence[Mapping[str, Any]],
    answers: Sequence[Mapping[str, Any]],
    chat_fn: ChatFn,
    judge_model: str = "judge",
    judge_prompts: Mapping[str, Mapping[str, Any]] | None = None,
    reference_answers: Mapping[int, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Grades every answered turn with single-answer grading and summarises the scores.

    Args:
        questions: MT-Bench questions.
        answers: ``model_answer`` records (see :func:`answer_questions`); questions without an answer are skipped.
        chat_fn: ``chat_fn(messages) -> reply text``, e.g. an :class:`OpenAIChatJudge`.
        judge_model: judge name recorded in each judgment.
        judge_prompts: prompts by name; ``None`` for the shipped ones.
        reference_answers: reference turns by question id; ``None`` for the shipped GPT-4 answers.

    Returns:
        :func:`summarise_judgments`'s summary plus ``"judgments"``, the per-question records (score -1 = failed).
    """
    prompts = load_judge_prompts() if judge_prompts is None else judge_prompts
    references = load_reference_answers() if reference_answers is None else reference_answers
    by_id = {a["question_id"]: a for a in answers}
    judgments = []
    for question in sorted(questions, key=lambda q: q["question_id"]):
        if question["question_id"] not in by_id:
            continue
        answer_turns = by_id[question["question_id"]]["choices"][0]["turns"]
        for turn in range(1, min(len(question["turns"]), len(answer_turns), 2) + 1):
            judgments.append(_judge_one(question, answer_turns, turn, chat_fn, prompts, references, judge_model))
    return {**summarise_judgments(judgments), "judge_model": judge_model, "judgments": judgments}
