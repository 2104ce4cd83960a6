"""The OpenAI wire format of the server's requests, read into typed values, and its error bodies.

Requests are plain JSON objects checked field by field, so that every refusal names the field (``param``) in the
OpenAI error body ``{"error": {"message", "type", "param", "code"}}``. Conversations are read by the chat
``messages`` rules of :func:`~nemo_steerlm.data.sources.chat_messages_conversation` (the same as ``prepare``), and
steering labels by the attribute schema (:class:`~nemo_steerlm.attributes.AttributeSchema`): nothing here renders a
prompt or defines a label.

Library code: plain arguments in, no Hydra config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nemo_steerlm.attributes import USER_ROLE, AttributeSchema, LabelError
from nemo_steerlm.data.io import DataError
from nemo_steerlm.data.sources import chat_messages_conversation
from nemo_steerlm.data.template import Conversation, Turn

#: the most choices (``n``) and stop strings one request may ask for
MAX_CHOICES = 16
MAX_STOPS = 4


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI-style error body.

    Args:
        message: what is wrong, in words.
        param: the request field at fault (``"steer.verbosity"``, ``"messages[2].role"``), or ``None``.
        status: the HTTP status.
        code: a short machine-readable code.
        kind: the OpenAI error ``type``.
    """

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        code: str = "invalid_value",
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Sampling:
    """The sampling fields of a generation request.

    Args:
        max_tokens: the most new tokens per choice.
        greedy: ``temperature`` 0: always the most likely token.
        temperature: softmax temperature (ignored when greedy).
        top_p: nucleus filter (1.0 = none).
        seed: the sampling seed, or ``None`` (the batch it runs in draws one).
        n: choices per prompt.
        stop: extra stop strings (the turn marker always stops).
        stream: answer with server-sent events.
        include_usage: with ``stream``, a last chunk carries the usage counts (``stream_options.include_usage``).
    """

    max_tokens: int
    greedy: bool
    temperature: float
    top_p: float
    seed: int | None
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class GenerationRequest:
    """A chat or completion request, read: the conversations to answer, the label, the sampling fields.

    Args:
        conversations: one conversation per prompt (a chat request has one).
        label: the steering label every prompt is answered under.
        sampling: the sampling fields.
    """

    conversations: list[Conversation]
    label: str
    sampling: Sampling


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f"{key}={value!r}: expected a number in [{low}, {high}]", key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{key}={value!r}: expected an integer in [{low}, {high}]", key)
    return value


def _stops(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise RequestError(f"stop={stop!r}: expected a non-empty string or a list of at most {MAX_STOPS}", "stop")
    return tuple(stops)


def read_sampling(body: Mapping[str, Any], default_max_tokens: int, max_tokens_limit: int) -> Sampling:
    """The sampling fields of a request (``max_completion_tokens`` is read as ``max_tokens``)."""
    key = "max_completion_tokens" if body.get("max_tokens") is None else "max_tokens"
    max_tokens = _integer(body, key, default_max_tokens, 1, max_tokens_limit)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options: expected an object", "stream_options")
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise RequestError(f"top_p={top_p}: must be in (0, 1]", "top_p")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream={stream!r}: expected true or false", "stream")
    return Sampling(
        max_tokens=int(max_tokens or default_max_tokens),
        greedy=temperature == 0.0,
        temperature=temperature,
        top_p=top_p,
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        n=int(_integer(body, "n", 1, 1, MAX_CHOICES) or 1),
        stop=_stops(body),
        stream=stream,
        include_usage=bool((options or {}).get("include_usage", False)),
    )


def resolve_label(body: Mapping[str, Any], schema: AttributeSchema, defaults: Mapping[str, int]) -> str:
    """The steering label of a request: ``label`` (a whole label), else ``defaults`` with the ``steer`` overrides.

    Args:
        body: the request.
        schema: the attributes the model was trained with labels for (its ``labelled_schema``).
        defaults: the server's default steering values (the default steering label plus the server's overrides).

    Raises:
        RequestError: both fields given, an unknown attribute, a value that is not an integer in range, a label
            that does not parse (``param`` names the field).
    """
    label, steer = body.get("label"), body.get("steer")
    if label is not None and steer is not None:
        raise RequestError("give either 'label' or 'steer', not both", "label")
    if label is not None:
        if not isinstance(label, str):
            raise RequestError(f"label={label!r}: expected a string like 'helpfulness:4,verbosity:1'", "label")
        try:
            schema.parse_label(label)
        except LabelError as err:
            raise RequestError(str(err), "label") from None
        return label
    if steer is not None and not isinstance(steer, dict):
        raise RequestError(f'steer={steer!r}: expected an object like {{"verbosity": 1}}', "steer")
    checked: dict[str, int] = {}
    for name, value in (steer or {}).items():
        try:
            checked[name] = schema.check_value(name, value)
        except LabelError as err:
            raise RequestError(f"steer.{name}: {err}", f"steer.{name}") from None
    return schema.steer_label(checked, defaults)


def _text_content(content: Any, where: str) -> Any:
    """A message's content as text: a string, or the text parts of a content list joined (OpenAI's parts form)."""
    if not isinstance(content, list):
        return content
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError("only text content parts are supported", f"{where}.content[{j}]")
        texts.append(part["text"])
    return "".join(texts)


def _messages(body: Mapping[str, Any], key: str = "messages") -> list[dict[str, Any]]:
    messages = body.get(key)
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"{key}: expected a non-empty list of {{role, content}} messages", key)
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"expected a message object, got {type(message).__name__}", f"{key}[{i}]")
        out.append({**message, "content": _text_content(message.get("content"), f"{key}[{i}]")})
    return out


def _conversation(messages: list[dict[str, Any]], schema: AttributeSchema, key: str) -> Conversation:
    """Messages read by the chat ``messages`` rules (as ``prepare`` reads them); a DataError becomes a 400."""
    try:
        return chat_messages_conversation({"messages": messages}, schema, "request", 0)
    except DataError as err:
        param = f"{key}{err.field.removeprefix('messages')}" if err.field else key
        raise RequestError(err.reason, param) from None


def chat_conversation(body: Mapping[str, Any], schema: AttributeSchema) -> Conversation:
    """The conversation a chat request asks to continue: its messages, which must end with a user message."""
    messages = _messages(body)
    if messages[-1].get("role") != "user":
        raise RequestError("the last message must be a user message (the assistant answers it)", "messages")
    placeholder = {"role": "assistant", "content": ""}  # the rules want an answer; it is dropped again
    conv = _conversation([*messages, placeholder], schema, "messages")
    conv.turns.pop()
    return conv


def scored_conversations(body: Mapping[str, Any], schema: AttributeSchema) -> list[Conversation]:
    """The conversations of an attribute-scoring request: ``messages`` (one) or ``conversations`` (a list of them).

    Each is a list of chat messages with at least one assistant answer; every assistant answer is scored.
    """
    if ("messages" in body) == ("conversations" in body):
        raise RequestError("give 'messages' (one conversation) or 'conversations' (a list of them)", "messages")
    if "messages" in body:
        return [_conversation(_messages(body), schema, "messages")]
    convs = body["conversations"]
    if not isinstance(convs, list) or not convs:
        raise RequestError("conversations: expected a non-empty list of message lists", "conversations")
    out = []
    for i, messages in enumerate(convs):
        where = f"conversations[{i}]"
        out.append(_conversation(_messages({where: messages}, where), schema, where))
    return out


def cut_at_stops(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first of ``stops`` it holds, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def settled_text(text: str, stops: tuple[str, ...]) -> str:
    """The part of a partial decode that later tokens cannot change.

    Cut at the first stop string, minus a tail that could still grow into a stop string, minus trailing replacement
    characters (the first bytes of a character whose last bytes are still to come).
    """
    text, _ = cut_at_stops(text, stops)
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold].rstrip("\ufffd")


def scored_texts(body: Mapping[str, Any], max_batch: int) -> tuple[list[str], int | None]:
    """The ``texts`` of a raw scoring request and its ``batch_size``.

    ``texts`` are regression texts as annotate renders them (ending ``<extra_id_2>``); ``batch_size`` sets the
    prediction batches (more than ``max_batch`` is cut to it; absent or null: the model's own prediction batch, what
    annotate and evaluate use with the model loaded, so that a client gets exactly the numbers of a loaded model).
    """
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise RequestError("texts: expected a non-empty list of non-empty strings", "texts")
    size = body.get("batch_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise RequestError("batch_size: expected a positive integer or null", "batch_size")
    return texts, None if size is None else min(size, max_batch)


def completion_conversations(body: Mapping[str, Any]) -> list[Conversation]:
    """The conversations of a completion request: each ``prompt`` is one user turn.

    As ``generate`` reads ``{"prompt": ...}`` lines; ``system`` replaces the system prompt when given.
    """
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise RequestError("prompt: expected a non-empty string or a list of them", "prompt")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise RequestError("system: expected a string", "system")
    convs = [Conversation([Turn(p, USER_ROLE)]) for p in prompts]
    for conv in convs:
        if system is not None:
            conv.system = system
    return convs
