r"""Steered text generation with a SteerLM SFT model: prompts, sampling, a KV cache, and TP/PP/DP execution.

The prompt of a conversation is :func:`~nemo_steerlm.data.template.render_prompt` (the conversation so far, the
assistant header and ``<extra_id_2>{label}\n``), cut by the model's prompt policy to what training kept of such a
conversation (:class:`~nemo_steerlm.data.tokenization.PromptPolicy`). Generation stops when the decoded continuation
contains the turn marker ``<extra_id_1>`` (several tokens with most tokenizers, one with the shipped tiny BPE), at the
tokenizer's end-of-sequence token, or after ``max_new_tokens``. The marker and what follows it are cut from the
response.

KV cache: megatron-core's own :class:`~megatron.core.inference.contexts.StaticInferenceContext` passed as
``inference_context`` to ``GPTModel.forward`` (its buffers are allocated on CPU by the CPU adapter). A batch is
pre-filled in one forward pass: prompts are padded on the left to the longest, the padding slots are masked out of
every query's keys, and RoPE follows each token's unpadded position (the cache context carries per-slot positions
that :class:`~nemo_steerlm.models.gpt.PositionAwareGPTModel` reads), so every token sits at the same position as in
an unbatched run and no padding is attended to; then every step adds one token per sequence, ``max_new_tokens``
steps at most however the prompt lengths differ. Without the KV cache (``use_cache=False``, for checks) the
stepwise loop of Megatron's classic text generation runs instead: pre-fill up to the shortest prompt, then one
position per step, a sequence still inside its prompt taking its next prompt token.

CUDA graphs for the decode step are not used: megatron's static KV cache re-applies RoPE to every cached key and
slices the cache to the current length each step (shapes change every step), and the sampler and stop checks run
on the host; capturing the step needs a fixed-shape cache and attention first (megatron's dynamic inference
context and its CUDA-graph support are the way there).

Parallelism: every rank of one model-parallel group runs the same loop on the same prompts. Pipeline stages pass
hidden states ``[s, b, h]`` point to point; the last stage gathers the tensor-parallel logits, samples (same seed on
every rank) and broadcasts the chosen tokens to the whole pipeline. Data-parallel replicas take interleaved shares of
the length-sorted prompts and gather the results, so every rank returns every response in input order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.inference.contexts import StaticInferenceContext

from nemo_steerlm.attributes import ASSISTANT_ROLE
from nemo_steerlm.data.template import Conversation
from nemo_steerlm.data.tokenization import Encoded, encode_prompt
from nemo_steerlm.errors import UserError
from nemo_steerlm.megatron import parallel
from nemo_steerlm.models.gpt import PositionAwareGPTModel
from nemo_steerlm.sampling import SamplingParams

if TYPE_CHECKING:
    from nemo_steerlm.models.base import MegatronGPTBase


@dataclass
class Generation:
    """One prompt's result.

    Args:
        prompt_ids: the prompt tokens fed to the model (after left truncation).
        token_ids: the generated tokens, up to and including the stop token(s).
        text: the response: the decoded tokens cut before the stop text.
        stop_reason: ``"stop_text"``, ``"eos"``, ``"max_new_tokens"``, or ``"cancelled"`` (a :data:`TokenCallback`
            stopped it).
        prompt_truncated: whether the prompt was cut from the left to fit the model.
    """

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    stop_reason: str = "max_new_tokens"
    prompt_truncated: bool = False


def prompt_conversation(conv: Conversation) -> tuple[Conversation, str | None]:
    """The conversation to answer and the reference answer dropped from it.

    A conversation that ends with an assistant turn is continued from before that turn (the turn is returned as the
    reference); one that ends with a user turn is answered as it is.
    """
    if conv.turns and conv.turns[-1].role == ASSISTANT_ROLE:
        return Conversation(conv.turns[:-1], conv.system, conv.mask, conv.type, dict(conv.extra)), conv.turns[-1].value
    return conv, None


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Chooses one token per row of ``logits`` ``[b, V]`` (float32) by greedy or filtered sampling."""
    if params.greedy:
        return logits.argmax(dim=-1)
    scores = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, index = torch.sort(scores, descending=True, dim=-1)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= params.top_p  # keep the token that crosses p
        ordered = ordered.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, index, ordered)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --- one forward step through the pipeline --------------------------------------------------------------------------
def _pipeline_forward(
    module: torch.nn.Module,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    context: StaticInferenceContext | None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Runs ``tokens`` [b, s] through this rank's stage; the last stage returns the last position's logits [b, V].

    ``attention_mask`` (``True`` = masked, ``[b, 1, s, keys]``) hides the padding of left-padded rows.
    """
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    first = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    last = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    config = module.config
    tokens, positions = tokens.to(parallel.device()), positions.to(parallel.device())
    if pp > 1 and not first:
        shape = (tokens.shape[1], tokens.shape[0], config.hidden_size)
        hidden = torch.empty(shape, dtype=config.pipeline_dtype, device=parallel.device())
        dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
        module.set_input_tensor(hidden)
    if attention_mask is not None:
        attention_mask = attention_mask.to(parallel.device())
    out = module(tokens, positions, attention_mask, inference_context=context, runtime_gather_output=True)
    if not last:
        dist.send(out.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
        return None
    return out[:, -1, :].float()


def _broadcast_tokens(chosen: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Sends the last stage's chosen tokens to every stage and TP peer; returns them on the CPU (bookkeeping)."""
    out = chosen if chosen is not None else torch.zeros(batch, dtype=torch.long)
    out = out.to(device=parallel.device(), dtype=torch.long).contiguous()
    if (
        parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        and parallel_state.get_tensor_model_parallel_world_size() > 1
    ):
        dist.broadcast(
            out,
            src=parallel_state.get_tensor_model_parallel_src_rank(),
            group=parallel_state.get_tensor_model_parallel_group(),
        )
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(
            out,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
    return out.cpu()


#: tokens decoded per step to look for the stop text (far more than any marker needs)
STOP_WINDOW = 32

#: ``on_token(index, generation)``, called after each token a prompt gets (``index``: the prompt's position in the
#: input); returning ``False`` stops that prompt (stop reason ``"cancelled"``, the text decoded so far). A server
#: streams with it and frees the rows of clients that went away.
TokenCallback = Callable[[int, "Generation"], bool]

#: ``agree(requested)``, called on every rank once per decode step with, per row of the batch, whether this rank's
#: ``on_token`` asked to stop it; returns the rows every rank stops (a server broadcasts its lead rank's requests, so
#: the ranks of a TP/PP layout, where only the lead sees its clients, stop the same rows and run the same steps).
#: Without it a row stops as soon as ``on_token`` says so.
StopAgreement = Callable[[list[bool]], list[bool]]


class _BatchState:
    """Per-sequence bookkeeping of one batch: tokens so far, stop checks."""

    def __init__(
        self,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        tokenizer: Any,
        pad_id: int,
        on_token: TokenCallback | None = None,
        agree: StopAgreement | None = None,
    ) -> None:
        self.on_token, self.agree = on_token, agree
        self.requested = [False] * len(prompts)
        self.lengths = [len(p) for p in prompts]
        self.total = max(self.lengths) + params.max_new_tokens
        self.tokens = torch.full((len(prompts), self.total), pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            self.tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        self.results = [Generation(list(p)) for p in prompts]
        self.done = [False] * len(prompts)
        self.params, self.tokenizer = params, tokenizer
        self.eos = tokenizer.eos_token_id

    def advance(self, position: int, chosen: torch.Tensor) -> None:
        """Places the token of ``position`` for every sequence (prompt token or the chosen one) and checks stops."""
        for i in range(len(self.results)):
            if position < self.lengths[i] or self.done[i]:
                continue
            self.tokens[i, position] = int(chosen[i])
            self.accept(i, int(chosen[i]))
        self.end_step()

    def accept(self, i: int, token: int) -> None:
        """Appends a generated token to sequence ``i`` and checks its stops."""
        result = self.results[i]
        result.token_ids.append(token)
        if self._stop_text_in_tail(result.token_ids):
            text = self._decode(result.token_ids)
            result.text = text[: text.find(self.params.stop_text)]
            result.stop_reason, self.done[i] = "stop_text", True
        elif self.eos is not None and token == self.eos:
            result.text, result.stop_reason = self._decode(result.token_ids[:-1]), "eos"
            self.done[i] = True
        elif len(result.token_ids) >= self.params.max_new_tokens:
            result.text, self.done[i] = self._decode(result.token_ids), True
        if self.on_token is not None and not self.on_token(i, result) and not self.done[i]:
            if self.agree is None:
                self._cancel(i)
            else:
                self.requested[i] = True

    def end_step(self) -> None:
        """Stops the rows the ranks agree to stop (every rank calls it once per decode step when ``agree`` is set)."""
        if self.agree is None:
            return
        for i, stop in enumerate(self.agree(self.requested)):
            if stop and not self.done[i]:
                self._cancel(i)
        self.requested = [False] * len(self.requested)

    def _cancel(self, i: int) -> None:
        result = self.results[i]
        result.text, result.stop_reason = self._decode(result.token_ids), "cancelled"
        self.done[i] = True

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _stop_text_in_tail(self, ids: list[int]) -> bool:
        """Whether the stop text appears in the last :data:`STOP_WINDOW` tokens.

        Decoding only the tail keeps each step's check constant-time; a marker spans a handful of tokens even where
        it is plain text.
        """
        return bool(self.params.stop_text) and self.params.stop_text in self._decode(ids[-STOP_WINDOW:])


def generate_batch(
    module: torch.nn.Module,
    prompts: Sequence[list[int]],
    params: SamplingParams,
    tokenizer: Any,
    vocab_size: int,
    generator: torch.Generator,
    on_token: TokenCallback | None = None,
    agree: StopAgreement | None = None,
) -> list[Generation]:
    """Generates continuations of a batch of token-id prompts (call on every rank of the model-parallel group).

    Args:
        module: this rank's megatron GPT stage (a ``GPTModel`` with the language-model head).
        prompts: the prompts' token ids (any lengths, each non-empty).
        params: sampling settings.
        tokenizer: decodes continuations for the stop check.
        vocab_size: the tokenizer's vocabulary size (logits of padded vocabulary rows are never chosen).
        generator: the sampling generator (same seed on every rank).
        on_token: called after each token of a prompt (its index in ``prompts``); see :data:`TokenCallback`.
        agree: settles, once per decode step on every rank, which rows ``on_token`` stopped; see
            :data:`StopAgreement`.

    Returns:
        One :class:`Generation` per prompt, the same on every rank.
    """
    state = _BatchState(prompts, params, tokenizer, int(tokenizer.pad_token_id), on_token, agree)
    module.eval()
    if params.use_cache and isinstance(module, PositionAwareGPTModel):
        with torch.no_grad():
            _decode_prefilled(module, prompts, state, vocab_size, generator)
        return state.results
    return _decode_stepwise(module, state, vocab_size, generator)


def _decode_stepwise(
    module: torch.nn.Module, state: _BatchState, vocab_size: int, generator: torch.Generator
) -> list[Generation]:
    """The general loop: prefill up to the shortest prompt, then one position per step for every sequence.

    A sequence still inside its prompt takes its next prompt token instead of the sampled one. Used without the KV
    cache (the whole sequence is recomputed every step) and for models whose RoPE cannot follow per-row positions.
    """
    params, batch = state.params, len(state.lengths)
    context = StaticInferenceContext(batch, state.total) if params.use_cache else None
    start, position = 0, min(state.lengths)
    with torch.no_grad():
        while position < state.total and not all(state.done):
            begin = start if params.use_cache else 0
            tokens = state.tokens[:, begin:position]
            positions = torch.arange(begin, position, dtype=torch.long).unsqueeze(0).expand(batch, -1)
            logits = _pipeline_forward(module, tokens, positions, context)
            chosen = None
            if logits is not None:
                logits[:, vocab_size:] = float("-inf")
                chosen = sample_next(logits, params, generator)
            state.advance(position, _broadcast_tokens(chosen, batch))
            if context is not None:
                context.sequence_len_offset += position - start
                context.enable_decode_mode()
            start, position = position, position + 1
    return state.results


class _LeftPaddedContext(StaticInferenceContext):
    """Megatron's static KV cache for left-padded rows: ``rope_positions`` [b, slots] is each cache slot's position.

    :class:`~nemo_steerlm.models.gpt.PositionAwareGPTModel` reads it, so a prompt token sits at the same RoPE position
    as in an unpadded run whatever its row's padding.
    """

    def __init__(self, batch: int, total: int, rope_positions: torch.Tensor) -> None:
        super().__init__(batch, total)
        self.rope_positions = rope_positions


def _decode_prefilled(
    module: torch.nn.Module,
    prompts: Sequence[list[int]],
    state: _BatchState,
    vocab_size: int,
    generator: torch.Generator,
) -> None:
    """KV-cache decoding with one batched prefill of all prompts (left-padded), then one new token per step.

    Row ``i`` is padded on the left by ``pad_i`` slots; its tokens keep positions ``0..`` (RoPE through
    :class:`_LeftPaddedContext`) and the padding slots are masked out of every query's keys. With equal prompt lengths
    there is no padding and no mask (the causal kernel, as in the stepwise loop). Decoding needs
    ``max_new_tokens`` steps after the prefill, however the prompt lengths differ.
    """
    batch, longest = len(prompts), max(state.lengths)
    total = longest + state.params.max_new_tokens
    pads = torch.tensor([longest - n for n in state.lengths], dtype=torch.long)
    slots = torch.arange(total, dtype=torch.long)
    positions = (slots.unsqueeze(0) - pads.unsqueeze(1)).clamp(min=0)  # [b, slots]
    padding = slots.unsqueeze(0) < pads.unsqueeze(1)  # [b, slots], True = a padding slot
    padded = bool(padding.any())
    tokens = torch.zeros((batch, longest), dtype=torch.long)  # padding slots: any id, they are masked
    for i, prompt in enumerate(prompts):
        tokens[i, int(pads[i]) :] = torch.tensor(prompt, dtype=torch.long)
    context = _LeftPaddedContext(batch, total, positions.to(parallel.device()))
    mask = None
    if padded:  # causal, and no key in a padding slot ([b, 1, s, s], True = masked)
        causal = torch.ones(longest, longest, dtype=torch.bool).tril()
        mask = ~(causal.unsqueeze(0) & ~padding[:, None, :longest]).unsqueeze(1)
    logits = _pipeline_forward(module, tokens, positions[:, :longest], context, mask)
    for step in range(state.params.max_new_tokens):
        chosen = None
        if logits is not None:
            logits[:, vocab_size:] = float("-inf")
            chosen = sample_next(logits, state.params, generator)
        chosen = _broadcast_tokens(chosen, batch)
        for i in range(batch):
            if not state.done[i]:
                state.accept(i, int(chosen[i]))
        state.end_step()
        if all(state.done) or step + 1 == state.params.max_new_tokens:
            return
        at = longest + step
        context.sequence_len_offset = at
        context.enable_decode_mode()
        mask = padding[:, None, None, : at + 1] if padded else None
        logits = _pipeline_forward(module, chosen.unsqueeze(1), positions[:, at : at + 1], context, mask)


def _data_parallel_share(order: list[int]) -> list[int]:
    rank, size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    return order[rank::size]


def spread_bound(module: torch.nn.Module, params: SamplingParams) -> int:
    """How far prompt lengths in one batch may differ (see :func:`length_batches`); unbounded for batched prefill."""
    if params.use_cache and isinstance(module, PositionAwareGPTModel):
        return sys.maxsize
    return max(params.max_new_tokens // 2, 8)


def length_batches(order: list[int], lengths: list[int], batch_size: int, max_spread: int) -> list[list[int]]:
    """Cuts length-sorted prompt indices into batches of at most ``batch_size`` whose lengths differ by ``max_spread``.

    For the stepwise loop (no KV cache, or a model whose RoPE cannot follow per-row positions): a batch is prefilled
    up to its shortest prompt and the longer prompts are then fed one token per step, so a wide spread costs steps
    for the whole batch; a new batch costs ``max_new_tokens`` decode steps. Bounding the spread by about half of that
    keeps both small. The batched prefill (:func:`_decode_prefilled`) needs no bound: a spread costs only the masked
    padding of one prefill, while every extra batch costs ``max_new_tokens`` decode steps
    (:func:`spread_bound` picks).
    """
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and lengths[i] - lengths[batches[-1][0]] <= max_spread:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def generate_ids(
    model: MegatronGPTBase, prompts: Sequence[list[int]], params: SamplingParams, max_prompt_tokens: int | None = None
) -> list[Generation]:
    """Generates for token-id prompts, split over data-parallel replicas and gathered back in input order.

    Args:
        model: a :class:`~nemo_steerlm.models.sft.SteerLMSFTModel` (built or restored on every rank).
        prompts: token ids of each prompt (single-turn; :func:`generate_full` cuts multi-turn ones itself).
        params: sampling settings.
        max_prompt_tokens: prompts longer than this are cut from the left; default: what the model's prompt policy
            keeps before ``max_new_tokens`` (:meth:`~nemo_steerlm.data.tokenization.PromptPolicy.prompt_limit`).

    Returns:
        One :class:`Generation` per prompt, in input order, on every rank.
    """
    limit = max_prompt_tokens or max(model.prompt_policy.prompt_limit(params.max_new_tokens), 1)
    return generate_prepared(model, [list(p[-limit:]) for p in prompts], [len(p) > limit for p in prompts], params)


def generate_prepared(
    model: MegatronGPTBase,
    prompts: Sequence[list[int]],
    truncated: Sequence[bool],
    params: SamplingParams,
    on_token: TokenCallback | None = None,
    agree: StopAgreement | None = None,
) -> list[Generation]:
    """Generates for prompts already cut to what the model reads (``truncated``: whether each was cut).

    ``on_token`` (one data-parallel replica only: replicas would call it for their share) is called with each
    prompt's index in ``prompts`` after each of its tokens; see :data:`TokenCallback`. On a TP/PP layout where only
    one rank has ``on_token``, every rank passes ``agree`` (:data:`StopAgreement`) so that all stop the same rows.
    """
    if getattr(model.transformer_config, "sequence_parallel", False):
        raise UserError("generation does not run with sequence parallelism: restore with model.sequence_parallel=false")
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    mine = _data_parallel_share(order)
    generator = torch.Generator(device=parallel.device()).manual_seed(params.seed)
    results: list[tuple[int, Generation]] = []
    lengths = [len(p) for p in prompts]
    for idx in length_batches(mine, lengths, params.batch_size, spread_bound(model.model, params)):
        hook = None if on_token is None else (lambda j, gen, idx=idx: on_token(idx[j], gen))
        batch = generate_batch(
            model.model,
            [prompts[i] for i in idx],
            params,
            model.tokenizer,
            len(model.tokenizer),
            generator,
            hook,
            agree,
        )
        for i, gen in zip(idx, batch, strict=True):
            gen.prompt_truncated = truncated[i]
            results.append((i, gen))
    ordered: list[Generation | None] = [None] * len(prompts)
    for i, gen in parallel.gather_data_parallel(results):
        ordered[i] = gen
    return [g for g in ordered if g is not None]


def encode_prompts(
    model: MegatronGPTBase, conversations: Sequence[Conversation], labels: Sequence[str | None], max_new_tokens: int
) -> list[Encoded]:
    """What the model reads of each conversation under its label (the prompt policy it was trained with)."""
    policy = model.prompt_policy
    return [
        encode_prompt(conv, label, model.tokenizer, policy, max_new_tokens)
        for conv, label in zip(conversations, labels, strict=True)
    ]


def resolve_labels(
    model: MegatronGPTBase, conversations: Sequence[Conversation], labels: str | Sequence[str | None] | None
) -> list[str | None]:
    """One label per conversation: a single label for all, one each, or the default label of the trained attributes."""
    if labels is None or isinstance(labels, str):
        label = model.labelled_schema.steer_label() if labels is None else labels
        return [label] * len(conversations)
    labels = list(labels)
    if len(labels) != len(conversations):
        raise UserError(f"got {len(labels)} labels for {len(conversations)} conversations; pass one per conversation")
    return labels


def generate_full(
    model: MegatronGPTBase,
    conversations: Sequence[Conversation],
    labels: str | Sequence[str | None] | None = None,
    params: SamplingParams | None = None,
) -> list[Generation]:
    """Like :func:`generate` but returns the full :class:`Generation` records (ids, stop reason, truncation)."""
    params = params or SamplingParams()
    encoded = encode_prompts(model, conversations, resolve_labels(model, conversations, labels), params.max_new_tokens)
    return generate_prepared(model, [e.input_ids for e in encoded], [e.truncated for e in encoded], params)


def generate(
    model: MegatronGPTBase,
    conversations: Sequence[Conversation],
    labels: str | Sequence[str | None] | None = None,
    params: SamplingParams | None = None,
) -> list[str]:
    """Steered responses to conversations (the next assistant turn of each), in input order, on every rank.

    Call on every rank of the job with the same arguments.

    Args:
        model: a :class:`~nemo_steerlm.models.sft.SteerLMSFTModel`.
        conversations: conversations ending with a user turn (multi-turn allowed); use :func:`prompt_conversation`
            to strip a trailing assistant turn.
        labels: the steering label ``"name:value,..."`` for every prompt, a list with one label (or ``None`` = no
            label block) per conversation, or ``None`` for the default steering label of the attributes the model was
            trained with.
        params: sampling settings (default: sampling at temperature 1, 128 new tokens).

    Returns:
        The responses, without the stop marker.
    """
    return [g.text for g in generate_full(model, conversations, labels, params)]
