"""`nemo-steerlm run`: the whole chain on the shipped sample (tiny model, few steps), its report, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm.models.checkpoint import read_nemo_meta
from nemo_steerlm.resources import helpsteer_sample_path

pytestmark = pytest.mark.integration

FAST = [
    'overrides.train_apm=["trainer.max_steps=4","trainer.val_check_interval=2"]',
    'overrides.train_sft=["trainer.max_steps=4","trainer.val_check_interval=2"]',
    'overrides.evaluate=["steerability.num_prompts=2","generation.max_new_tokens=8","truthfulqa.max_questions=24",'
    '"steer.complexity=2"]',
]
HELPSTEER = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "demo"
    res = ok(steerlm("run", f"output_dir={out}", *FAST, timeout=1500))
    return out, res.stdout


def test_every_stage_ran_in_its_folder(chain: tuple[Path, str]) -> None:
    out, stdout = chain
    for stage in ("prepare", "analyze", "train-apm", "annotate", "train-sft", "evaluate"):
        assert (out / stage / f"{stage}.summary.json").exists(), stage
    analysis = json.loads((out / "analyze" / "analysis.json").read_text(encoding="utf-8"))
    train = (out / "prepare" / "sft" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    val = (out / "prepare" / "sft" / "val.jsonl").read_text(encoding="utf-8").splitlines()
    assert analysis["rows"] == len(train) + len(val)  # analyze read the prepared data, one row per HelpSteer line
    assert "[../analyze/analysis.md](../analyze/analysis.md)" in (out / "evaluate" / "report.md").read_text()
    assert f"report -> {out / 'evaluate' / 'report.md'}" in stdout


def test_report_has_every_section_and_its_numbers_come_from_results(chain: tuple[Path, str]) -> None:
    out, _ = chain
    report = (out / "evaluate" / "report.md").read_text(encoding="utf-8")
    results = json.loads((out / "evaluate" / "results.json").read_text(encoding="utf-8"))
    for name in HELPSTEER:
        entry = results["apm"]["attributes"][name]
        assert entry["n"] > 0 and {"model", "mean", "length"} <= set(entry)
        assert name in report
    for attribute in ("verbosity", "complexity", "helpfulness"):
        sweep = results["steerability"][attribute]
        assert "spearman" in json.dumps(sweep)
        assert f"### {attribute}" in report
    # the training data's own curve: what train-sft read (annotate's labels), recounted here
    ref = results["steerability"]["verbosity"]["data_reference"]
    annotated = out / "annotate" / "train.annotated.jsonl"
    rows = [json.loads(x)["conversations"][-1] for x in annotated.read_text(encoding="utf-8").splitlines()]
    lowest = min(int(r["label"].rsplit("verbosity:", 1)[1]) for r in rows)
    at_lowest = [r["value"] for r in rows if r["label"].endswith(f"verbosity:{lowest}")]
    assert ref["file"] == str(annotated)
    assert ref["n"] == len(rows) and ref["unlabelled"] == ref["outside_levels"] == 0  # tiny preset sweeps 0..4
    assert ref["levels"][0]["requested"] == lowest
    words = sum(len(t.split()) for t in at_lowest) / len(at_lowest)
    assert ref["levels"][0]["words"]["mean"] == pytest.approx(words)
    assert "Spearman(label, measure) in the training data: words" in report
    # steer.complexity=2 reached evaluate through run: the verbosity sweep holds complexity at 2, and the label
    # coverage counts it in the annotations
    lines = (out / "evaluate" / "steer_responses.jsonl").read_text(encoding="utf-8").splitlines()
    steered = [json.loads(x) for x in lines if json.loads(x)["attribute"] == "verbosity"]
    assert steered and all(",complexity:2," in r["label"] for r in steered)
    cov = ref["coverage"]
    assert cov["turns"] == len(rows)
    assert cov["values"]["complexity"] == {"2": sum("complexity:2" in r["label"] for r in rows)}
    assert sum(cov["values"]["verbosity"].values()) == len(rows)  # every turn has one of the levels 0..4
    assert "Label coverage, labelled training turns" in report
    # the conditioning diagnostic, on the prompts of the annotated file that carry differently labelled responses
    cond = results["conditioning"]
    assert cond["file"] == str(annotated) and 0 < cond["groups"] <= 32
    assert 0.0 < cond["chance"] < 1.0 and cond["correct"] <= cond["selections"]
    assert "## Conditioning (does the model listen to its labels?)" in report
    tqa = results["truthfulqa"]
    assert tqa["n"] == 24 and 0.0 <= tqa["mc1"] <= 1.0 and 0.0 <= tqa["mc2"] <= 1.0
    assert results["perplexity"]["perplexity"] > 1.0
    for stage in ("prepare", "train-apm", "annotate", "train-sft"):
        assert f"stage {stage}" in results["timings"]
    for png in ("apm_scatter.png", "steerability.png"):
        assert (out / "evaluate" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in report


def test_mt_bench_answers_in_fastchat_format(chain: tuple[Path, str]) -> None:
    out, _ = chain
    lines = (out / "evaluate" / "mt_bench" / "nemo-steerlm.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 80
    for line in lines:
        record = json.loads(line)
        assert list(record) == ["question_id", "answer_id", "model_id", "choices", "tstamp"]
        assert len(record["choices"][0]["turns"]) == 2


def test_sft_trained_on_annotated_labels(chain: tuple[Path, str]) -> None:
    out, _ = chain
    annotated = (out / "annotate" / "train.annotated.jsonl").read_text(encoding="utf-8").splitlines()
    label = json.loads(annotated[0])["conversations"][1]["label"]
    # the APM saw HelpSteer labels only: annotation writes those five, and the SFT model records them
    assert [pair.split(":")[0] for pair in label.split(",")] == HELPSTEER
    assert read_nemo_meta(out / "train-sft" / "sft.nemo")["labelled_attributes"] == HELPSTEER
    cfg = (out / "train-sft" / "train-sft.config.yaml").read_text(encoding="utf-8")
    assert "train.annotated.jsonl" in cfg


def test_rerun_skips_finished_stages(chain: tuple[Path, str]) -> None:
    out, _ = chain
    res = ok(steerlm("run", f"output_dir={out}", *FAST))
    assert res.stdout.count("already done") == 6  # prepare, analyze, train-apm, annotate, train-sft, evaluate


def test_rerun_with_a_new_dataset_is_refused(chain: tuple[Path, str], tmp_path: Path) -> None:
    """Case (c): a finished run folder with a new dataset.path used to skip every stage and exit 0."""
    out, _ = chain
    new = tmp_path / "new.jsonl"
    new.write_text("".join(Path(helpsteer_sample_path()).read_text().splitlines(keepends=True)[:-4]))
    res = steerlm("run", f"output_dir={out}", f"dataset.path={new}", *FAST)
    assert res.returncode == 2 and "already done" not in res.stdout
    assert "dataset.path was" in res.stderr and "overwrite=true" in res.stderr


def test_preset_reaches_only_the_stages_that_have_one(tmp_path: Path) -> None:
    """`run preset=X` passes the preset to the model stages, not to `prepare` (whose config has no preset group)."""
    out = tmp_path / "p"
    ok(steerlm("run", "preset=llama2_7b", "stages=[prepare]", "dataset.val_fraction=0", f"output_dir={out}"))
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(out / "prepare" / "prepare.config.yaml")
    assert cfg.dataset.val_fraction == 0 and "preset" not in cfg
