"""Steerability measures, per-level summaries and steering labels."""

import json

import pytest

from nemo_steerlm.attributes import ASSISTANT_ROLE, DEFAULT_SCHEMA, USER_ROLE, AttributeSchema, LabelError
from nemo_steerlm.data.template import Conversation, Turn
from nemo_steerlm.evaluation.steerability import (
    SteerSample,
    compute_steerability,
    data_reference,
    fk_grade,
    label_coverage,
    plot_steerability,
    reference_samples,
    sweep_labels,
)


def test_sweep_labels_use_the_schema_defaults():
    labels = sweep_labels(DEFAULT_SCHEMA, "verbosity", [0, 4], {"humor": 1})
    assert labels == [
        "quality:4,toxicity:0,humor:1,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:0",
        "quality:4,toxicity:0,humor:1,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4",
    ]
    small = AttributeSchema(("helpfulness", "verbosity"))
    assert sweep_labels(small, "verbosity", [2]) == ["helpfulness:4,verbosity:2"]
    with pytest.raises(LabelError):
        sweep_labels(small, "humor", [1])


def test_fk_grade_by_hand():
    # 6 one-syllable words, 1 sentence: 0.39 * 6 + 11.8 * 1 - 15.59
    assert fk_grade("The cat sat on the mat.") == pytest.approx(-1.45)
    assert fk_grade("") == 0.0


def test_levels_and_spearman_over_individual_responses():
    sweep = [
        (0, "one", 0.5, 10),
        (1, "one two three", 1.5),
        SteerSample(2, "one two", apm_prediction=None),
        (1, "one two three four five", 2.5, 30),
    ]
    out = compute_steerability({"verbosity": sweep})["verbosity"]
    assert [lvl["requested"] for lvl in out["levels"]] == [0.0, 1.0, 2.0]
    level1 = out["levels"][1]
    assert level1["n"] == 2
    assert level1["words"] == {"mean": 4.0, "std": 1.0}  # words 3 and 5, population std
    assert level1["tokens"] == {"mean": 30.0, "std": 0.0}  # only one response has a token count
    assert out["levels"][2]["apm"] is None
    # words by requested value: ranks (1, 2.5, 4, 2.5) vs (1, 3, 2, 4) -> Pearson of ranks by hand
    rx, ry = [1, 2.5, 4, 2.5], [1, 3, 2, 4]
    mx, my = sum(rx) / 4, sum(ry) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    expected = cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    assert out["spearman"]["words"] == pytest.approx(expected)
    # APM only on 3 responses: requested (0, 1, 1) vs (0.5, 1.5, 2.5); 1 - 6 sum d^2 / n(n^2-1) does not apply
    # with ties, so check the rank-Pearson again: ranks (1, 2.5, 2.5) vs (1, 2, 3) -> 0.866...
    assert out["spearman"]["apm"] == pytest.approx(3**0.5 / 2)
    assert out["spearman"]["tokens"] == pytest.approx(1.0)
    json.dumps(out, allow_nan=False)


def test_spearman_without_ties_matches_the_textbook_formula():
    sweep = [(0, "a"), (1, "a b c"), (2, "a b")]
    out = compute_steerability({"verbosity": sweep})["verbosity"]
    assert out["spearman"]["words"] == pytest.approx(1 - 6 * 2 / (3 * 8))  # d = (0, 1, -1)
    assert out["spearman"]["apm"] is None and out["spearman"]["tokens"] is None


def test_within_prompt_spearman_averages_each_prompts_own_correlation():
    words = lambda n: " ".join(["w"] * n)  # noqa: E731
    sweep = [
        # prompt 0 grows with the level (rho 1), prompt 1 shrinks (rho -1), prompt 2 grows but not monotonically:
        # levels (0, 1, 2) vs words (1, 3, 2) -> 1 - 6 * 2 / (3 * 8) = 0.5; prompt 3 never changes (undefined)
        *[SteerSample(level, words(n), prompt=0) for level, n in [(0, 5), (1, 20), (2, 40)]],
        *[SteerSample(level, words(n), prompt=1) for level, n in [(0, 40), (1, 20), (2, 5)]],
        *[SteerSample(level, words(n), prompt=2) for level, n in [(0, 1), (1, 3), (2, 2)]],
        *[SteerSample(level, words(7), prompt=3) for level in (0, 1, 2)],
    ]
    out = compute_steerability({"verbosity": sweep})["verbosity"]
    within = out["spearman_within_prompt"]
    assert within["words"]["mean"] == pytest.approx((1 - 1 + 0.5) / 3)
    assert within["words"]["prompts"] == 3 and within["words"]["undefined"] == 1
    assert within["apm"] is None  # no APM predictions
    # without prompt indices there is nothing to group by
    plain = compute_steerability({"verbosity": [(0, "a"), (1, "a b")]})["verbosity"]
    assert all(v is None for v in plain["spearman_within_prompt"].values())


def test_bad_items_are_rejected():
    with pytest.raises(ValueError):
        compute_steerability({"verbosity": [(0,)]})
    with pytest.raises(ValueError):
        compute_steerability({"verbosity": []})


def test_plot_is_a_png(tmp_path):
    results = compute_steerability(
        {"verbosity": [(0, "a", 0.1), (0, "a b", 0.3), (4, "a b c d e f", 3.9)], "humor": [(0, "x y"), (4, "z")]}
    )
    data = plot_steerability(results, tmp_path / "steer.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def _labelled(prompt, response, label):
    return Conversation([Turn(prompt, USER_ROLE, None), Turn(response, ASSISTANT_ROLE, label)])


def test_data_reference_is_the_training_data_at_its_labels():
    schema = AttributeSchema(("helpfulness", "verbosity"))
    convs = [
        _labelled("A?", "a", "helpfulness:3,verbosity:0"),
        _labelled("B?", "x y", "verbosity:1"),
        _labelled("A?", "a b c", "helpfulness:2,verbosity:2"),
        _labelled("B?", "x y z w", "verbosity:3"),
        _labelled("A?", "a b c d e f", "verbosity:4"),  # outside the swept levels 0..3
        _labelled("C?", "q", "helpfulness:1"),  # no verbosity value
        _labelled("C?", "r", None),  # no label at all
    ]
    samples, counts = reference_samples(convs, schema, "verbosity", range(4))
    assert counts == {"unlabelled": 2, "outside_levels": 1}
    assert [(s.requested, s.text, s.prompt) for s in samples] == [
        (0.0, "a", 0),
        (1.0, "x y", 1),
        (2.0, "a b c", 0),
        (3.0, "x y z w", 1),
    ]
    ref = data_reference(convs, schema, "verbosity", range(4))
    assert ref["n"] == 4 and "responses" not in ref and ref["outside_levels"] == 1
    assert [lvl["words"]["mean"] for lvl in ref["levels"]] == [1.0, 2.0, 3.0, 4.0]
    assert ref["spearman"]["words"] == pytest.approx(1.0)
    # each prompt has two responses that grow with the label: within-prompt 1.0 over 2 prompts
    assert ref["spearman_within_prompt"]["words"] == pytest.approx({"mean": 1.0, "prompts": 2, "undefined": 0})
    # levels (0, 2) only: prompt B has no response there, A's two still give rho 1
    narrow = data_reference(convs, schema, "verbosity", [0, 2])
    assert narrow["n"] == 2 and narrow["outside_levels"] == 3
    assert data_reference(convs, schema, "helpfulness", [0])["n"] == 0
    with pytest.raises(LabelError):  # a label the schema cannot read is an error, not a skip
        reference_samples([_labelled("D?", "d", "humor:1")], schema, "verbosity", [0])


def test_plot_draws_the_data_reference(tmp_path):
    schema = AttributeSchema(("verbosity",))
    results = compute_steerability({"verbosity": [(0, "a"), (1, "a b c")]})
    results["verbosity"]["data_reference"] = data_reference(
        [_labelled("A?", "a b", "verbosity:0"), _labelled("A?", "a b c d", "verbosity:1")], schema, "verbosity", [0, 1]
    )
    with_ref = plot_steerability(results, tmp_path / "ref.png").read_bytes()
    del results["verbosity"]["data_reference"]
    without = plot_steerability(results, tmp_path / "plain.png").read_bytes()
    assert with_ref[:8] == b"\x89PNG\r\n\x1a\n" and with_ref != without


def test_label_coverage_counts_every_labelled_assistant_turn():
    schema = AttributeSchema(("complexity", "verbosity"))
    two_turns = Conversation(
        [
            Turn("A?", USER_ROLE, None),
            Turn("a", ASSISTANT_ROLE, "complexity:2,verbosity:0"),
            Turn("More?", USER_ROLE, None),
            Turn("a b", ASSISTANT_ROLE, "complexity:2,verbosity:1"),
        ]
    )
    convs = [
        two_turns,
        _labelled("B?", "b", "complexity:1,verbosity:1"),
        _labelled("C?", "c", "verbosity:1"),  # no complexity: counts for verbosity only
        _labelled("D?", "d", None),  # unlabelled: not a labelled turn
    ]
    labels = sweep_labels(schema, "verbosity", [0, 1, 3], {"complexity": 2})
    cov = label_coverage(convs, schema, labels)
    assert cov["turns"] == 4
    assert cov["values"] == {"complexity": {"2": 2}, "verbosity": {"0": 1, "1": 3, "3": 0}}
    assert cov["labels"] == dict(zip(labels, [1, 1, 0], strict=True))
    assert cov["unseen"] == ["verbosity=3"]
    # the schema's default (4) for the attribute held fixed: never in this data
    default = label_coverage(convs, schema, sweep_labels(schema, "verbosity", [1]))
    assert default["values"]["complexity"] == {"4": 0} and default["unseen"] == ["complexity=4"]
    assert default["labels"] == {"complexity:4,verbosity:1": 0}
    with pytest.raises(LabelError):  # a training label the schema cannot read is an error, not a skip
        label_coverage([_labelled("E?", "e", "humor:1")], schema, labels)
