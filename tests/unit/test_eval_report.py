"""The Markdown report: sections, relative plot links, and every number traceable to the results dict."""

import json
import re

import numpy as np

from nemo_steerlm.attributes import ASSISTANT_ROLE, MASK_VALUE, USER_ROLE, AttributeSchema
from nemo_steerlm.data.template import Conversation, Turn
from nemo_steerlm.evaluation.apm_metrics import compute_apm_metrics, plot_apm
from nemo_steerlm.evaluation.mt_bench import judge_answers
from nemo_steerlm.evaluation.perplexity import perplexity
from nemo_steerlm.evaluation.report import fmt, package_versions, render_report, write_report
from nemo_steerlm.evaluation.steerability import compute_steerability, data_reference, label_coverage
from nemo_steerlm.evaluation.truthfulqa import TruthfulQAItem, evaluate_truthfulqa

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
CONFIG = "stage: evaluate\nseed: 1234\nmodel:\n  path: /ckpt/sft.nemo\n"


def _results(tmp_path):
    names = ["helpfulness", "verbosity"]
    preds = np.array([[1.2, 0.1], [2.6, 0.2], [3.4, 0.3]])
    targets = np.array([[1, MASK_VALUE], [3, MASK_VALUE], [3, MASK_VALUE]])
    train = np.array([[0, 1], [2, 2], [4, 4]], dtype=float)
    apm = compute_apm_metrics(preds, targets, names, train, np.array([5, 17, 40]), np.array([8, 21, 33]))
    plot_apm(preds, targets, names, tmp_path / "plots" / "apm.png")
    steer = compute_steerability(
        {"verbosity": [(0, "Short one.", 0.7, 11, 0), (4, "A much longer answer here.", 3.3, 29, 0)]}
    )
    reference = [
        Conversation([Turn("Q?", USER_ROLE, None), Turn(text, ASSISTANT_ROLE, f"verbosity:{level}")])
        for level, text in [(0, "Tiny."), (4, "A rather long and winding reply, really."), (2, "Middle one here.")]
    ]
    steer["verbosity"]["data_reference"] = {
        **data_reference(reference, AttributeSchema(("verbosity",)), "verbosity", [0, 4]),
        "coverage": label_coverage(reference, AttributeSchema(("verbosity",)), ["verbosity:0", "verbosity:4"]),
        "file": "data/sft/train.jsonl",
    }
    items = [TruthfulQAItem("Q?", "Toy", "yes", ("yes",), ("no", "maybe"))]
    tqa = evaluate_truthfulqa(items, lambda c, k: [{"yes": -1.0, "no": -2.0, "maybe": -0.25}[x] for x in k], str)
    question = {"question_id": 81, "category": "writing", "turns": ["Write.", "Again."]}
    answer = {"question_id": 81, "choices": [{"index": 0, "turns": ["Text.", "More text."]}]}
    verdicts = iter(["Rating: [[6]]", "hmm"])
    judge = judge_answers([question], [answer], lambda messages: next(verdicts), "judge-x")
    return {
        "apm": apm,
        "steerability": steer,
        "truthfulqa": tqa,
        "perplexity": perplexity([12.5, 30.25], [7, 13]),
        "mt_bench": {"answer_file": str(tmp_path / "mt_bench" / "m.jsonl"), "n_questions": 1, "judge": judge},
        "plots": {"apm": str(tmp_path / "plots" / "apm.png")},
        "versions": {"numpy": "2.4.6", "not-a-package": None},
        "timings": {"apm": 1.25, "mt_bench": 73.5},
    }


def _allowed_numbers(obj, out):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if NUMBER.fullmatch(str(key)):
                out.add(str(key))
            _allowed_numbers(value, out)
    elif isinstance(obj, list):
        for value in obj:
            _allowed_numbers(value, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.update({fmt(obj), fmt(obj, 1), fmt(float(obj)), str(obj)})
        if float(obj).is_integer():
            out.add(str(int(obj)))  # requested steering levels are printed as integers
    return out


def test_every_number_comes_from_the_results(tmp_path):
    results = _results(tmp_path)
    report_path, json_path = write_report(results, tmp_path, CONFIG)
    text = report_path.read_text(encoding="utf-8")
    assert json.loads(json_path.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    body = text.split("## Resolved config")[0] + text.split("```\n", 1)[1]  # the YAML is quoted verbatim
    body = body.replace(results["mt_bench"]["answer_file"], "")  # a path string from the dict, digits and all
    allowed = _allowed_numbers(results, set())
    found = NUMBER.findall(body)
    assert len(found) > 40
    stray = [n for n in found if n not in allowed]
    assert not stray, stray
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "report.md", "results.json"]


def test_sections_links_and_values(tmp_path):
    results = _results(tmp_path)
    text = render_report(results, tmp_path, CONFIG)
    for heading in ("Attribute prediction model", "Steerability", "TruthfulQA", "Perplexity", "MT-Bench", "Timings"):
        assert f"## {heading}" in text
    assert "![apm](plots/apm.png)" in text
    assert "```yaml\n" + CONFIG + "```" in text
    assert "| helpfulness | APM | 3 |" in text and "| helpfulness | train mean | 3 |" in text
    assert "No labelled held-out rows for: verbosity." in text
    assert "| 0 | 1 | 2.000 ± 0.000 | 11.000 ± 0.000 |" in text  # requested 0: "Short one." = 2 words
    assert "Within-prompt Spearman, mean over 1 prompts: words 1.000, tokens 1.000, fk_grade" in text
    ref = "Training data `data/sft/train.jsonl`, its responses at their labels (2; 1 at other levels and 0 unlabelled"
    assert ref in text and "| 4 | 1 | 7.000 ± 0.000 |" in text
    assert "Spearman(label, measure) in the training data: words 1.000 (within-prompt 1.000)" in text
    coverage = "labelled training turns (3) with each requested value: verbosity 0: 1, 4: 1. With the whole sweep"
    assert coverage in text and "level by level: 1, 1." in text and "Never in the training data" not in text
    ref_entry = results["steerability"]["verbosity"]["data_reference"]
    ref_entry["coverage"] = label_coverage(
        [Conversation([Turn("Q?", USER_ROLE, None), Turn("Tiny.", ASSISTANT_ROLE, "verbosity:0")])],
        AttributeSchema(("verbosity",)),
        ["verbosity:0", "verbosity:3"],
    )
    unseen = render_report(results, tmp_path, CONFIG)
    assert "**Never in the training data: verbosity=3.**" in unseen and "verbosity 0: 1, 3: 0." in unseen
    assert f"| 1 | {fmt(results['truthfulqa']['mc1'])} | {fmt(results['truthfulqa']['mc2'])} |" in text
    assert "| 0.000 |" in text.split("## TruthfulQA")[1]  # MC1 0: "maybe" beats "yes"
    assert f"| {fmt(results['perplexity']['perplexity'])} |" in text
    assert "failed judgments 1 of 2" in text and "| writing | 6.000 | 6.000 | — | 1 |" in text
    assert "| not-a-package | not installed |" in text and "| mt_bench | 73.5 |" in text


def test_partial_results_and_unjudged_mt_bench(tmp_path):
    text = render_report({"mt_bench": {"answer_file": "a.jsonl", "n_questions": 80, "judge": None}})
    assert "Not judged" in text and "## Attribute" not in text and "## Resolved config" not in text


def test_package_versions_reads_metadata_only():
    versions = package_versions(["numpy", "surely-not-installed-xyz"])
    assert versions["numpy"] == np.__version__ and versions["surely-not-installed-xyz"] is None
