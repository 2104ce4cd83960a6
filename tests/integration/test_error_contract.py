"""The one error contract through the real CLI: a user-caused failure is one line naming the key or file and line,
exit 2, no traceback, and no output under a final name. One case per input that used to escape it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import steerlm

from nemo_steerlm.resources import helpsteer_sample_path

pytestmark = pytest.mark.integration
OASST_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "oasst_fixture.trees.jsonl"


def _one_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _helpsteer_with(tmp_path: Path, line: str) -> Path:
    rows = Path(helpsteer_sample_path()).read_text(encoding="utf-8").splitlines(keepends=True)[:20]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(rows[:5]) + line + "\n" + "".join(rows[5:]), encoding="utf-8")
    return path  # the bad row is line 6


def _oasst_with(tmp_path: Path, trees: list[dict]) -> Path:
    path = tmp_path / "trees.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in trees), encoding="utf-8")
    return path


def _fixture_trees() -> list[dict]:
    return [json.loads(line) for line in OASST_FIXTURE.read_text(encoding="utf-8").splitlines()]


TYPED_CASES = [
    ("prepare", ["dataset.val_fraction=abc"], "dataset.val_fraction=abc"),
    ("train-apm", ["trainer.max_steps=abc"], "trainer.max_steps=abc"),
    ("generate", ["model=m.nemo", "data=d.jsonl", "sampling.max_new_tokens=abc"], "sampling.max_new_tokens=abc"),
    ("annotate", ["model=m.nemo", "data=d.jsonl", "chunk_size=abc"], "chunk_size=abc"),
]


@pytest.mark.parametrize(("stage", "args", "needle"), TYPED_CASES, ids=[c[2] for c in TYPED_CASES])
def test_a_mistyped_setting_names_its_key(stage: str, args: list[str], needle: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _one_line(steerlm(stage, f"output_dir={out}", *args), needle, "expected")
    assert not out.exists()  # refused before anything (data/ included) was written


def test_val_fraction_out_of_range_names_the_dataset_key(tmp_path: Path) -> None:
    _one_line(steerlm("prepare", f"output_dir={tmp_path / 'o'}", "dataset.val_fraction=1.5"), "dataset.val_fraction")


def test_unpaired_surrogate_escape_in_a_response_names_file_and_line(tmp_path: Path) -> None:
    row = json.loads(Path(helpsteer_sample_path()).read_text(encoding="utf-8").splitlines()[0])
    row["response"] = "fine \ud800 text"
    src = _helpsteer_with(tmp_path, json.dumps(row))  # ensure_ascii: the file holds the escape \\ud800
    assert "\\ud800" in src.read_text()
    _one_line(steerlm("prepare", f"output_dir={tmp_path / 'o'}", f"dataset.path={src}"), f"{src}:6", "\\ud800")
    assert not (tmp_path / "o" / "sft").exists()


def test_deeply_nested_json_names_file_and_line(tmp_path: Path) -> None:
    src = _helpsteer_with(tmp_path, '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _one_line(steerlm("prepare", f"output_dir={tmp_path / 'o'}", f"dataset.path={src}"), f"{src}:6", "nested")


def test_oasst_prompter_replying_to_a_prompter_names_file_line_and_field(tmp_path: Path) -> None:
    trees = _fixture_trees()
    trees[1]["prompt"]["replies"][0]["role"] = "prompter"
    src = _oasst_with(tmp_path, trees)
    res = steerlm("prepare", "dataset=oasst", f"dataset.path={src}", f"output_dir={tmp_path / 'o'}")
    _one_line(res, f"{src}:2", "prompt.replies[0].role", "prompter")


def test_oasst_single_tree_giving_an_empty_training_split_is_refused(tmp_path: Path) -> None:
    src = _oasst_with(tmp_path, _fixture_trees()[:1])
    res = steerlm("prepare", "dataset=oasst", f"dataset.path={src}", f"output_dir={tmp_path / 'o'}")
    _one_line(res, "dataset.val_fraction", "no training conversation")
    assert not (tmp_path / "o" / "sft").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [("{", "not valid JSON"), ('{"model_type": "llama", "hidden_size": 64}', "num_attention_heads")],
    ids=["malformed", "incomplete"],
)
def test_bad_hf_config_json_names_the_file(text: str, needle: str, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(text)
    res = steerlm("import-hf", f"model_path={hf}", f"output_dir={tmp_path / 'o'}")
    _one_line(res, str(hf / "config.json"), needle)


def test_truncated_nemo_archive_names_the_archive(tiny_apm: Path, tmp_path: Path) -> None:
    data = (tiny_apm / "apm.nemo").read_bytes()
    nemo = tmp_path / "cut.nemo"
    nemo.write_bytes(data[: len(data) // 2])
    _one_line(steerlm("export", f"model={nemo}", f"output_dir={tmp_path / 'o'}"), str(nemo))
    assert not (tmp_path / "o" / "hf").exists()
