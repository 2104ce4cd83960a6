"""Untrusted and damaged `.nemo` archives through the real CLI: no code runs, damage is named, exit 2.

The crafted archives start from a real tiny APM (the session's `train-apm` run) and change one member: a
`model_weights/.metadata` or `common.pt` pickle whose `__reduce__` would create a marker file, flipped bytes inside a
weights file, a removed checksum record, a tar bomb, a member path that leaves the extraction folder. An attacker
rewrites the checksum record too, so the crafted archives carry a consistent one: what stops them is the loader.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm.models.checkpoint import CHECKSUM_KEY, META_NAME, member_checksums

pytestmark = pytest.mark.integration


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _unpack(nemo: Path, into: Path) -> Path:
    with tarfile.open(nemo, "r:") as tar:
        tar.extractall(into, filter="data")
    return into


def _pack(root: Path, nemo: Path, *, kind: str | None = None, record: bool = True) -> Path:
    """Re-tars ``root`` as a .nemo; rewrites steerlm.json's checksum record (and kind) like an attacker would."""
    meta = json.loads((root / META_NAME).read_text())
    if kind is not None:
        meta["kind"] = kind
    meta.pop(CHECKSUM_KEY, None)
    if record:
        meta[CHECKSUM_KEY] = member_checksums(root)
    (root / META_NAME).write_text(json.dumps(meta))
    with tarfile.open(nemo, "w") as tar:
        for item in sorted(root.iterdir()):
            tar.add(item, arcname=item.name)
    return nemo


def _stage_args(stage: str, nemo: Path, tiny_apm: Path, out: Path) -> list[str]:
    args = [stage, f"model={nemo}", f"output_dir={out}"]
    if stage == "annotate":
        args.append(f"data={tiny_apm / 'data' / 'sft' / 'val.jsonl'}")
    if stage == "generate":
        args += [f"data={tiny_apm / 'data' / 'sft' / 'val.jsonl'}", "limit=1"]
    return args


def _one_error_line(res, *needles: str) -> str:
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("stage", ["generate", "export", "annotate"])
def test_metadata_pickle_payload_is_refused_and_never_runs(stage: str, tiny_apm: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root = _unpack(tiny_apm / "apm.nemo", tmp_path / "x")
    (root / "model_weights" / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    nemo = _pack(root, tmp_path / "evil.nemo", kind="sft" if stage == "generate" else None)
    res = steerlm(*_stage_args(stage, nemo, tiny_apm, tmp_path / "out"))
    _one_error_line(res, "model_weights/.metadata", "io.open")
    assert not marker.exists()
    assert not (tmp_path / "out" / "hf").exists()


def test_common_pt_payload_is_refused_even_when_torch_defaults_to_full_unpickling(
    tiny_apm: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    root = _unpack(tiny_apm / "apm.nemo", tmp_path / "x")
    buf = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buf)
    (root / "model_weights" / "common.pt").write_bytes(buf.getvalue())
    nemo = _pack(root, tmp_path / "evil.nemo")
    # torch's own default would unpickle common.pt in full with this variable set
    unsafe_default = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    res = steerlm(*_stage_args("export", nemo, tiny_apm, tmp_path / "out"), env=unsafe_default)
    _one_error_line(res, "model_weights/common.pt", "weights_only")
    assert not marker.exists()


def test_flipped_bytes_in_a_weights_file_name_the_member(tiny_apm: Path, tmp_path: Path) -> None:
    root = _unpack(tiny_apm / "apm.nemo", tmp_path / "x")
    nemo = tmp_path / "damaged.nemo"
    shutil.copy(tiny_apm / "apm.nemo", nemo)
    # flip 4 KiB in the middle of the first weights shard, in place (the archive's record stays the saved one)
    with tarfile.open(nemo, "r:") as tar:
        info = tar.getmember("model_weights/__0_0.distcp")
    assert info.size == (root / "model_weights" / "__0_0.distcp").stat().st_size > 8192
    with open(nemo, "r+b") as f:
        f.seek(info.offset_data + 4096)
        data = f.read(4096)
        f.seek(info.offset_data + 4096)
        f.write(bytes(b ^ 0xFF for b in data))
    res = steerlm(*_stage_args("export", nemo, tiny_apm, tmp_path / "out"))
    _one_error_line(res, "model_weights/__0_0.distcp", "damaged")


def test_archive_without_checksum_record_loads_with_a_warning(tiny_apm: Path, tmp_path: Path) -> None:
    root = _unpack(tiny_apm / "apm.nemo", tmp_path / "x")
    nemo = _pack(root, tmp_path / "old.nemo", record=False)
    res = ok(steerlm(*_stage_args("export", nemo, tiny_apm, tmp_path / "out")))
    assert "no checksum record" in res.stdout + res.stderr
    assert (tmp_path / "out" / "hf" / "config.json").is_file()


def test_saved_archive_records_every_members_sha256(tiny_apm: Path, tmp_path: Path) -> None:
    root = _unpack(tiny_apm / "apm.nemo", tmp_path / "x")
    record = json.loads((root / META_NAME).read_text())[CHECKSUM_KEY]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert sorted(record) == [f for f in files if f != META_NAME]
    assert "model_weights/.metadata" in record
    for name, digest in record.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest


def test_tar_bomb_is_refused_before_anything_is_unpacked(tiny_apm: Path, tmp_path: Path) -> None:
    # a GNU sparse member: 1 KiB in the archive, 64 GiB once unpacked
    nemo = tmp_path / "bomb.nemo"
    root = _unpack(tiny_apm / "apm.nemo", tmp_path / "x")
    info = tarfile.TarInfo("model_weights/huge.bin")
    sparse_map = b"1\n0\n512\n".ljust(512, b"\0")
    info.size = 1024
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": info.name,
        "GNU.sparse.realsize": str(64 << 30),
    }
    with tarfile.open(nemo, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root / META_NAME, arcname=META_NAME)
        tar.addfile(info, io.BytesIO(sparse_map + b"x" * 512))
    with tarfile.open(nemo, "r:") as tar:
        assert tar.getmember(info.name).size == 64 << 30  # what an unguarded extraction would write
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    res = steerlm(*_stage_args("export", nemo, tiny_apm, tmp_path / "out"), env={"TMPDIR": str(tmp)})
    _one_error_line(res, "tar bomb")
    assert not list(tmp.rglob("huge.bin"))


def test_compressed_bomb_is_refused(tiny_apm: Path, tmp_path: Path) -> None:
    nemo = tmp_path / "gz.nemo"
    with tarfile.open(nemo, "w:gz") as tar:
        info = tarfile.TarInfo("model_weights/zeros.bin")
        info.size = 32 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert nemo.stat().st_size < 1 << 20
    res = steerlm(*_stage_args("export", nemo, tiny_apm, tmp_path / "out"))
    _one_error_line(res, str(nemo))


def test_member_leaving_the_folder_is_refused(tiny_apm: Path, tmp_path: Path) -> None:
    root = _unpack(tiny_apm / "apm.nemo", tmp_path / "x")
    nemo = _pack(root, tmp_path / "escape.nemo")
    with tarfile.open(nemo, "a") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    res = steerlm(*_stage_args("export", nemo, tiny_apm, tmp_path / "out"))
    _one_error_line(res, "escaped.txt")
    assert not list(tmp_path.rglob("escaped.txt"))


#: model-config keys that older .nemo files do not have
NEWER_SETTINGS = (
    "core_attention",
    "rope_scaling_factor",
    "recompute_granularity",
    "recompute_method",
    "recompute_num_layers",
)


def _edit_config(tiny_apm: Path, tmp_path: Path, edit) -> Path:
    """The tiny APM with its model_config.yaml edited by ``edit(dict)``, repacked with a fresh checksum record."""
    import yaml

    root = _unpack(tiny_apm / "apm.nemo", tmp_path / "x")
    config = yaml.safe_load((root / "model_config.yaml").read_text())
    edit(config)
    (root / "model_config.yaml").write_text(yaml.safe_dump(config))
    return _pack(root, tmp_path / "edited.nemo")


def test_a_config_value_of_the_wrong_type_is_refused_naming_the_member_and_key(tiny_apm: Path, tmp_path: Path):
    nemo = _edit_config(tiny_apm, tmp_path, lambda c: c.update(num_layers="two"))
    res = steerlm(*_stage_args("export", nemo, tiny_apm, tmp_path / "out"))
    _one_error_line(res, "model_config.yaml", "num_layers", "Integer")
    assert not (tmp_path / "out" / "hf").exists()


def test_an_archive_from_before_newer_settings_restores_with_the_values_it_was_built_with(
    tiny_apm: Path, tmp_path: Path
) -> None:
    """A .nemo written before core attention, recomputation and rope scaling were settings: the schema's legacy
    values (sdpa, none, none) restore it; its export equals the current archive's, byte for byte."""
    old = _edit_config(tiny_apm, tmp_path, lambda c: [c.pop(k) for k in NEWER_SETTINGS])
    ok(steerlm(*_stage_args("export", old, tiny_apm, tmp_path / "old")))
    ok(steerlm(*_stage_args("export", tiny_apm / "apm.nemo", tiny_apm, tmp_path / "new")))
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "old" / "hf" / name).read_bytes() == (tmp_path / "new" / "hf" / name).read_bytes(), name
