"""The server's request reading, stop-string handling and batching queue, without a model (fast).

Expected values are written out from the OpenAI wire format and the label grammar, not produced by the code.
"""

from __future__ import annotations

import threading
import time

import pytest

from nemo_steerlm.attributes import SYSTEM_PROMPT, AttributeSchema
from nemo_steerlm.serving.engine import BatchEngine, Job, Overloaded
from nemo_steerlm.serving.protocol import (
    RequestError,
    chat_conversation,
    completion_conversations,
    cut_at_stops,
    read_sampling,
    resolve_label,
    scored_conversations,
    scored_texts,
    settled_text,
)

HELPSTEER = AttributeSchema(("helpfulness", "correctness", "coherence", "complexity", "verbosity"))
DEFAULTS = {"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 4, "verbosity": 4}


def refused(call, *args) -> RequestError:
    with pytest.raises(RequestError) as err:
        call(*args)
    return err.value


def test_steer_fields_fill_the_default_label() -> None:
    assert resolve_label({}, HELPSTEER, DEFAULTS) == "helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4"
    got = resolve_label({"steer": {"verbosity": 1, "complexity": 0}}, HELPSTEER, {**DEFAULTS, "helpfulness": 2})
    assert got == "helpfulness:2,correctness:4,coherence:4,complexity:0,verbosity:1"
    assert resolve_label({"label": "verbosity:0"}, HELPSTEER, DEFAULTS) == "verbosity:0"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"steer": {"humor": 1}}, "steer.humor"),
        ({"steer": {"verbosity": 5}}, "steer.verbosity"),
        ({"steer": {"verbosity": -1}}, "steer.verbosity"),
        ({"steer": {"verbosity": "2"}}, "steer.verbosity"),
        ({"steer": {"verbosity": True}}, "steer.verbosity"),
        ({"steer": [1]}, "steer"),
        ({"label": "verbosity:x"}, "label"),
        ({"label": 3}, "label"),
        ({"label": "verbosity:1", "steer": {}}, "label"),
    ],
)
def test_bad_steering_names_the_field(body: dict, param: str) -> None:
    err = refused(resolve_label, body, HELPSTEER, DEFAULTS)
    assert err.status == 400 and err.param == param
    assert err.body() == {"error": {"message": err.message, "type": "invalid_request_error", "param": param,
                                    "code": "invalid_value"}}  # fmt: skip


def test_sampling_fields() -> None:
    s = read_sampling({"max_tokens": 7, "temperature": 0, "seed": 3, "n": 2, "stop": "##", "stream": True}, 16, 512)
    assert (s.max_tokens, s.greedy, s.seed, s.n, s.stop, s.stream) == (7, True, 3, 2, ("##",), True)
    s = read_sampling({"max_completion_tokens": 9, "temperature": 0.7, "top_p": 0.5}, 16, 512)
    assert (s.max_tokens, s.greedy, s.temperature, s.top_p, s.seed, s.n, s.stop) == (9, False, 0.7, 0.5, None, 1, ())
    assert read_sampling({}, 16, 512).max_tokens == 16


@pytest.mark.parametrize(
    "body, param",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 513}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 17}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"seed": "1"}, "seed"),
    ],
)
def test_bad_sampling_fields_name_the_field(body: dict, param: str) -> None:
    assert refused(read_sampling, body, 16, 512).param == param


def test_chat_messages_become_the_conversation_to_answer() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4", "label": "verbosity:0"},
                         {"role": "user", "content": [{"type": "text", "text": "and "},
                                                      {"type": "text", "text": "3+3?"}]}]}  # fmt: skip
    conv = chat_conversation(body, HELPSTEER)
    assert conv.system == "Be brief."
    assert [(t.role, t.value, t.label) for t in conv.turns] == [
        ("User", "2+2?", None), ("Assistant", "4", "verbosity:0"), ("User", "and 3+3?", None)
    ]  # fmt: skip
    assert chat_conversation({"messages": [{"role": "user", "content": "hi"}]}, HELPSTEER).system == SYSTEM_PROMPT


@pytest.mark.parametrize(
    "messages, param",
    [
        ([], "messages"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "messages"),  # must end with user
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
         "messages[1].role"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": "a", "name": "bob"}], "messages[0]"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "label": "humor:1"},
          {"role": "user", "content": "c"}], "messages[1].label"),
    ],
)  # fmt: skip
def test_bad_messages_name_the_field(messages: list, param: str) -> None:
    err = refused(chat_conversation, {"messages": messages}, HELPSTEER)
    assert err.status == 400 and err.param == param


def test_scoring_and_completion_requests() -> None:
    one = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert len(scored_conversations({"messages": one}, HELPSTEER)) == 1
    assert len(scored_conversations({"conversations": [one, one]}, HELPSTEER)) == 2
    assert refused(scored_conversations, {"conversations": [one, one[:1]]}, HELPSTEER).param == "conversations[1]"
    assert refused(scored_conversations, {}, HELPSTEER).param == "messages"
    convs = completion_conversations({"prompt": ["a", "b"], "system": "S"})
    assert [(c.system, c.turns[0].role, c.turns[0].value) for c in convs] == [("S", "User", "a"), ("S", "User", "b")]
    assert refused(completion_conversations, {"prompt": ""}).param == "prompt"
    # raw texts: null batch = the model's own batches; a larger batch than the server's is cut to it
    assert scored_texts({"texts": ["a", "b"]}, 8) == (["a", "b"], None)
    assert scored_texts({"texts": ["a"], "batch_size": 3}, 8) == (["a"], 3)
    assert scored_texts({"texts": ["a"], "batch_size": 64}, 8) == (["a"], 8)
    assert refused(scored_texts, {"texts": ["a"], "batch_size": 0}, 8).param == "batch_size"
    assert refused(scored_texts, {"texts": []}, 8).param == "texts"


def test_stop_strings_and_settled_stream_text() -> None:
    stops = ("<extra_id_1>", "END")
    assert cut_at_stops("abc END x<extra_id_1>", stops) == ("abc ", True)
    assert cut_at_stops("abc", stops) == ("abc", False)
    assert settled_text("Hello <extra", stops) == "Hello "  # may still become the turn marker
    assert settled_text("Hello EN", stops) == "Hello "
    assert settled_text("Hello E.", stops) == "Hello E."
    assert settled_text("caf\ufffd", stops) == "caf"  # the rest of a character is still to come
    assert settled_text("done<extra_id_1>User", stops) == "done"


def _engine(run, **kw) -> BatchEngine:
    settings = {"max_batch": 4, "max_pending": 8, "batch_wait_s": 0.3, **kw}
    engine = BatchEngine(run, settings["max_batch"], settings["max_pending"], settings["batch_wait_s"])
    engine.start()
    return engine


def test_engine_batches_jobs_of_one_key_and_answers_each() -> None:
    seen: list[list[str]] = []

    def run(jobs: list[Job]) -> None:
        seen.append([j.payload for j in jobs])
        for j in jobs:
            j.send(("done", j.payload.upper()))

    answers: dict[str, str] = {}
    engine = _engine(run)
    jobs = [
        Job(k, f"{k}{i}", 1, lambda e, i=i, k=k: answers.__setitem__(f"{k}{i}", e[1])) for i, k in enumerate("aabaaaa")
    ]
    for job in jobs:
        engine.submit(job)
    deadline = time.monotonic() + 10
    while len(answers) < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.stop()
    assert answers == {j.payload: j.payload.upper() for j in jobs}
    # the oldest job's key first, at most max_batch rows, the other key after it
    assert seen == [["a0", "a1", "a3", "a4"], ["b2"], ["a5", "a6"]]
    assert engine.snapshot()["largest_batch"] == 4 and engine.pending == 0


def test_engine_refuses_beyond_max_pending_and_cancel_frees_a_slot() -> None:
    release = threading.Event()
    ran: list[str] = []

    def run(jobs: list[Job]) -> None:
        release.wait(10)
        for j in jobs:
            ran.append(j.payload)
            j.send(("done", None))

    engine = _engine(run, max_batch=1, max_pending=2, batch_wait_s=0.0)
    first, second, third = (Job("k", name, 1, lambda e: None) for name in ("first", "second", "third"))
    engine.submit(first)
    engine.submit(second)
    with pytest.raises(Overloaded):
        engine.submit(third)
    engine.cancel(second)  # still queued: it leaves the queue and its slot is free
    assert engine.pending == 1
    engine.submit(third)
    release.set()
    deadline = time.monotonic() + 10
    while engine.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.stop()
    assert ran == ["first", "third"]
    assert engine.snapshot()["rejected"] == 1 and engine.snapshot()["cancelled"] == 1
