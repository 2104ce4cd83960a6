"""The conditioning diagnostic: grouping labelled responses by prompt and counting label → response selections."""

from __future__ import annotations

import itertools

import pytest

from nemo_steerlm.data.template import Conversation, Turn
from nemo_steerlm.evaluation.conditioning import label_groups, selection_accuracy
from nemo_steerlm.evaluation.report import render_report


def _conv(prompt: str, response: str, label: str | None) -> Conversation:
    return Conversation([Turn(prompt, "User"), Turn(response, "Assistant", label)])


def test_groups_keep_prompts_with_two_labels_and_one_response_per_label() -> None:
    convs = [
        _conv("p1", "a", "verbosity:1"),
        _conv("p2", "x", "verbosity:2"),  # a prompt with a single label: no group
        _conv("p1", "b", "verbosity:3"),
        _conv("p1", "c", "verbosity:1"),  # the same label again: the first response keeps it
        _conv("p3", "y", None),  # unlabelled: counted as skipped
        _conv("p3", "z", "verbosity:0"),
        _conv("p3", "w", "verbosity:4"),
    ]
    groups, skipped = label_groups(convs, max_groups=10)
    assert skipped == 1
    assert [(g.prompt.turns[0].value, g.labels, g.responses) for g in groups] == [
        ("p1", ("verbosity:1", "verbosity:3"), ("a", "b")),
        ("p3", ("verbosity:0", "verbosity:4"), ("z", "w")),
    ]
    candidates = groups[0].candidates()
    assert [(c.turns[-1].label, c.turns[-1].value) for c in candidates] == [
        ("verbosity:1", "a"),
        ("verbosity:1", "b"),
        ("verbosity:3", "a"),
        ("verbosity:3", "b"),
    ]
    assert candidates[0].turns[0].value == "p1" and len(label_groups(convs, max_groups=1)[0]) == 1


def _groups(sizes: list[int]):
    convs = [_conv(f"p{g}", f"r{g}.{i}", f"verbosity:{i}") for g, k in enumerate(sizes) for i in range(k)]
    return label_groups(convs, max_groups=len(sizes))[0]


def test_a_model_that_listens_selects_every_own_response() -> None:
    groups = _groups([2, 3, 4])
    nll = [0.0 if i == j else 5.0 + j for g in groups for i, j in itertools.product(range(len(g.labels)), repeat=2)]
    got = selection_accuracy(groups, nll)
    assert got == {"groups": 3, "selections": 9, "correct": 9, "accuracy": 1.0, "chance": pytest.approx(3 / 9)}


def test_a_label_blind_model_scores_exactly_chance() -> None:
    groups = _groups([2, 3, 4])
    # the same scores under every label (e.g. shorter responses always more likely): one right answer per group
    nll = [float(10 - j) for g in groups for _i, j in itertools.product(range(len(g.labels)), repeat=2)]
    got = selection_accuracy(groups, nll)
    assert got["correct"] == 3 and got["accuracy"] == pytest.approx(got["chance"]) == pytest.approx(3 / 9)
    with pytest.raises(ValueError, match="got 28 scores for 29 candidates"):
        selection_accuracy(groups, nll[:-1])


def test_no_group_gives_none_and_the_report_says_so() -> None:
    got = selection_accuracy([], [])
    assert got["accuracy"] is None and got["chance"] is None
    text = render_report({"conditioning": {**got, "file": "train.jsonl"}})
    assert "## Conditioning" in text and "nothing to check" in text
    text = render_report({"conditioning": {**selection_accuracy(_groups([2]), [0.0, 1.0, 1.0, 0.0]), "file": "t"}})
    assert "| 1 | 2 | 2 | 1.000 | 0.500 |" in text
