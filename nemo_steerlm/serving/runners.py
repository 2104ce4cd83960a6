r"""What the batching worker runs: steered generation with an SFT model, attribute scoring with an APM.

Generation goes through the library's own path: :func:`~nemo_steerlm.models.generation.encode_prompts` (the
template and the model's prompt policy, exactly as ``generate``) and
:func:`~nemo_steerlm.models.generation.generate_prepared` (the KV-cache batched decoder), so a greedy request answers
what ``generate sampling.greedy=true`` answers. Streaming and disconnects use its per-token callback: each new token
sends the text that can no longer change (nothing that may still become a stop string, no half-decoded character),
and a cancelled request's rows stop. Scoring is annotate's :func:`~nemo_steerlm.inference.annotation.score_turns`.

On a TP/PP layout the runners run on global rank 0 and broadcast each model call to the other ranks first
(:class:`~nemo_steerlm.serving.followers.Peers`); :func:`follow` is the other ranks' side and makes the same calls.

Library code: plain arguments in, no Hydra config.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nemo_steerlm.attributes import TURN_MARKER
from nemo_steerlm.errors import UserError
from nemo_steerlm.models.generation import Generation, SamplingParams, encode_prompts, generate_prepared
from nemo_steerlm.serving.engine import Job
from nemo_steerlm.serving.followers import Peers
from nemo_steerlm.serving.protocol import GenerationRequest, RequestError, Sampling, cut_at_stops, settled_text

if TYPE_CHECKING:
    from nemo_steerlm.models.apm import AttributePredictionModel
    from nemo_steerlm.models.base import MegatronGPTBase
    from nemo_steerlm.models.sft import SteerLMSFTModel


def batch_key(sampling: Sampling) -> tuple[Any, ...]:
    """Requests with equal keys share a generation batch (one sampling setting, one token budget)."""
    return (sampling.max_tokens, sampling.greedy, sampling.temperature, sampling.top_p, sampling.seed)


@dataclass
class _Row:
    """One generated choice of one prompt of one job."""

    job: Job
    prompt: int
    choice: int
    stream: bool
    stops: tuple[str, ...]
    sent: str = ""
    user_stop: bool = False


@dataclass
class Choice:
    """One finished choice.

    Args:
        index: the choice's index in the response (prompt-major: prompt ``p`` choice ``c`` is ``p * n + c``).
        text: the answer (cut at a stop string).
        finish_reason: ``"stop"`` (the turn ended, end of text, or a stop string) or ``"length"``.
        tokens: generated tokens.
        remainder: what a stream has not sent yet of ``text``.
    """

    index: int
    text: str
    finish_reason: str
    tokens: int
    remainder: str = ""


@dataclass
class GenerationResult:
    """A job's answer: its choices, token counts and the label it was answered under."""

    choices: list[Choice]
    label: str
    prompt_tokens: int
    completion_tokens: int
    prompt_truncated: list[bool] = field(default_factory=list)


class SteerRunner:
    """Runs batches of generation jobs on a SteerLM SFT model (payload: a :class:`GenerationRequest`).

    Args:
        model: a :class:`~nemo_steerlm.models.sft.SteerLMSFTModel` (one replica: a single process, or global rank 0
            of a TP/PP layout whose other ranks :func:`follow`).
        seed: seeds the generator of the sampling seeds drawn for requests without ``seed``.
        peers: the other ranks of a TP/PP layout (``None`` in a single process).
    """

    def __init__(self, model: SteerLMSFTModel, seed: int, peers: Peers | None = None) -> None:
        self.model, self.peers = model, peers
        self._seeds = random.Random(seed)
        #: tokens generated so far, rows of cancelled requests included (how far a cancelled row got shows here)
        self.stats = {"generated_tokens": 0}

    def __call__(self, jobs: list[Job]) -> None:
        """Encodes each job's prompts, generates for all rows in one call, sends each job its result."""
        sampling: Sampling = jobs[0].payload.sampling
        rows: list[_Row] = []
        prompts: list[list[int]] = []
        truncated: list[bool] = []
        encoded_by_job: dict[int, list[Any]] = {}
        for job in jobs:
            req: GenerationRequest = job.payload
            labels = [req.label] * len(req.conversations)
            try:
                encoded = encode_prompts(self.model, req.conversations, labels, sampling.max_tokens)
            except UserError as err:  # the token budget leaves no room for the prompt
                job.send(("error", RequestError(str(err), "max_tokens")))
                continue
            encoded_by_job[id(job)] = encoded
            job.send(("accepted", None))  # a stream's response starts now (its refusals came before)
            stops = (TURN_MARKER, *req.sampling.stop)
            for p, enc in enumerate(encoded):
                for c in range(req.sampling.n):
                    rows.append(_Row(job, p, c, req.sampling.stream, stops))
                    prompts.append(list(enc.input_ids))
                    truncated.append(enc.truncated)
        if not rows:
            return
        seed = sampling.seed if sampling.seed is not None else self._seeds.randrange(2**31)
        params = SamplingParams(
            max_new_tokens=sampling.max_tokens,
            greedy=sampling.greedy,
            temperature=sampling.temperature if not sampling.greedy else 1.0,
            top_p=sampling.top_p,
            seed=seed,
            batch_size=len(rows),
        )
        agree = None
        if self.peers is not None:  # every rank runs the same generation; rank 0 settles the stops each step
            self.peers.send("generate", prompts, truncated, params)
            agree = self.peers.agree
        results = generate_prepared(self.model, prompts, truncated, params, self._on_token(rows), agree)
        self.stats["generated_tokens"] += sum(len(g.token_ids) for g in results)
        for job in jobs:
            if id(job) in encoded_by_job:
                job.send(("done", self._result(job, encoded_by_job[id(job)], rows, results)))

    def _on_token(self, rows: list[_Row]) -> Any:
        decode = self.model.tokenizer.decode

        def on_token(index: int, gen: Generation) -> bool:
            row = rows[index]
            if row.job.cancelled.is_set():
                return False
            if not row.stream and len(row.stops) == 1:
                return True
            decoded = decode(gen.token_ids, skip_special_tokens=False)
            text = settled_text(decoded, row.stops)
            _, row.user_stop = cut_at_stops(decoded, row.stops[1:])
            if row.stream and len(text) > len(row.sent):
                row.job.send(("delta", row.prompt * row.job.payload.sampling.n + row.choice, text[len(row.sent) :]))
                row.sent = text
            return not row.user_stop

        return on_token

    def _result(self, job: Job, encoded: list[Any], rows: list[_Row], results: list[Generation]) -> GenerationResult:
        req: GenerationRequest = job.payload
        choices = []
        for row, gen in zip(rows, results, strict=True):
            if row.job is not job:
                continue
            text, hit = cut_at_stops(gen.text, req.sampling.stop)
            reason = "length" if gen.stop_reason == "max_new_tokens" and not hit else "stop"
            index = row.prompt * req.sampling.n + row.choice
            remainder = text[len(row.sent) :] if text.startswith(row.sent) else text
            choices.append(Choice(index, text, reason, len(gen.token_ids), remainder))
        return GenerationResult(
            choices=choices,
            label=req.label,
            prompt_tokens=sum(len(e.input_ids) for e in encoded),
            completion_tokens=sum(c.tokens for c in choices),
            prompt_truncated=[bool(e.truncated) for e in encoded],
        )


class ScoreRunner:
    """Runs batches of scoring jobs on an attribute model.

    A job's payload is ``("conversations", [Conversation, ...])`` (each assistant turn scored, annotate's label) or
    ``("texts", [str, ...], batch_size)`` (regression texts: the raw outputs, as ``predict_texts`` gives them to
    annotate and evaluate; ``batch_size`` ``None`` = the model's own).

    Args:
        model: an :class:`~nemo_steerlm.models.apm.AttributePredictionModel` (one replica, as for
            :class:`SteerRunner`).
        batch_size: samples per prediction batch.
        peers: the other ranks of a TP/PP layout (``None`` in a single process).
    """

    def __init__(self, model: AttributePredictionModel, batch_size: int, peers: Peers | None = None) -> None:
        self.model, self.batch_size, self.peers = model, batch_size, peers

    def __call__(self, jobs: list[Job]) -> None:
        """Scores every assistant turn of all jobs' conversations in one call; sends each job its turns."""
        if jobs[0].payload[0] == "texts":
            self._texts(jobs)
            return
        from nemo_steerlm.inference.annotation import score_turns

        convs = [conv for job in jobs for conv in job.payload[1]]
        if self.peers is not None:
            self.peers.send("score", convs)
        scored, _ = score_turns(self.model, convs, self.batch_size)
        written = self.model.labelled_schema
        per_conv: list[list[dict[str, Any]]] = [[] for _ in convs]
        for s in scored:
            raw = dict(zip(self.model.schema.names, s.raw, strict=True))
            per_conv[s.conversation].append(
                {
                    "turn": s.turn,
                    "attributes": {n: raw[n] for n in written.names},
                    "scores": written.parse_label(s.label),
                    "label": s.label,
                }
            )
        start = 0
        for job in jobs:
            job.send(("done", per_conv[start : start + len(job.payload[1])]))
            start += len(job.payload[1])

    def _texts(self, jobs: list[Job]) -> None:
        """Raw outputs per job (one prediction call each: its count of texts cut to fit is its own)."""
        for job in jobs:
            _, texts, size = job.payload
            if self.peers is not None:
                self.peers.send("texts", list(texts), size)
            preds, truncated = self.model.predict_texts(list(texts), size)
            job.send(("done", {"predictions": preds.tolist(), "truncated": int(truncated)}))


def follow(model: MegatronGPTBase, peers: Peers, batch_size: int) -> int:
    """A rank other than 0 of a TP/PP layout: makes the model calls rank 0's runner broadcasts until it stops.

    Args:
        model: this rank's part of the SFT or attribute model.
        peers: the job's ranks.
        batch_size: samples per prediction batch (the :class:`ScoreRunner`'s).

    Returns:
        How many calls were made.
    """
    from nemo_steerlm.inference.annotation import score_turns

    def generate(prompts: list[list[int]], truncated: list[bool], params: SamplingParams) -> None:
        generate_prepared(model, prompts, truncated, params, None, peers.agree)

    handlers = {
        "generate": generate,
        "score": lambda convs: score_turns(model, convs, batch_size),
        "texts": lambda texts, size: model.predict_texts(texts, size),
    }
    return peers.follow(handlers)
