"""Fingerprints of stage output folders: what counts as a change and what does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_steerlm.errors import OutputInUseError
from nemo_steerlm.recipes.provenance import check_fingerprint, input_digest, launcher_rank


def _cfg(out: Path, data: Path, **extra: object):
    return OmegaConf.create({"output_dir": str(out), "data": str(data), "trainer": {"max_steps": 4}, **extra})


def _record(out: Path, cfg) -> None:
    import json

    out.mkdir(exist_ok=True)
    (out / "s.fingerprint.json").write_text(json.dumps(check_fingerprint("s", cfg, out, overwrite=False)))


def test_changed_input_content_and_setting_are_named_max_steps_is_not(tmp_path: Path) -> None:
    data, out = tmp_path / "d.jsonl", tmp_path / "out"
    data.write_text("a\n")
    _record(out, _cfg(out, data, seed=1))
    check_fingerprint("s", _cfg(out, data, seed=1, trainer={"max_steps": 9}), out, overwrite=False)  # resumable
    with pytest.raises(OutputInUseError, match="seed was 1, now 2"):
        check_fingerprint("s", _cfg(out, data, seed=2), out, overwrite=False)
    data.write_text("b\n")
    with pytest.raises(OutputInUseError, match=f"content of data={data} changed"):
        check_fingerprint("s", _cfg(out, data, seed=1), out, overwrite=False)
    check_fingerprint("s", _cfg(out, data, seed=1), out, overwrite=True)
    assert list(out.iterdir()) == []  # overwrite deleted the earlier results


def test_folder_digest_covers_data_not_logs_or_bookkeeping(tmp_path: Path) -> None:
    folder, out = tmp_path / "prep", tmp_path / "out"
    (folder / "sft").mkdir(parents=True)
    (folder / "sft" / "train.jsonl").write_text("x\n")
    first = input_digest(folder, out)
    (folder / "nemo_log.txt").write_text("more log")
    (folder / "prepare.summary.json").write_text("{}")
    assert input_digest(folder, out) == first
    (folder / "sft" / "train.jsonl").write_text("y\n")
    assert input_digest(folder, out) != first


def test_launcher_rank(monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert launcher_rank() == 0
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert launcher_rank() == 3
    monkeypatch.setenv("RANK", "1")
    assert launcher_rank() == 1


def test_stale_temporaries_of_a_killed_run_are_removed_outside_shards(tmp_path: Path) -> None:
    from nemo_steerlm.recipes.provenance import remove_stale_temporaries

    (tmp_path / "sft").mkdir()
    (tmp_path / "shards").mkdir()
    stale = tmp_path / "sft" / ".train.jsonl.k2j3h4_9.tmp"
    stale.write_text("partial")
    running_shard = tmp_path / "shards" / ".shard_00001.jsonl.abcdefgh.tmp"
    running_shard.write_text("partial")
    kept = tmp_path / "sft" / "train.jsonl"
    kept.write_text("done")
    users = tmp_path / ".notes.tmp"  # not a name our writers use
    users.write_text("mine")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and running_shard.exists() and kept.exists() and users.exists()
