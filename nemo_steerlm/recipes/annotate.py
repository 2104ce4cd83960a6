"""Stage ``annotate``: label SFT conversations with an attribute prediction model (resumable, shardable).

Run ``nemo-steerlm annotate model=APM.nemo data=SFT.jsonl output_dir=D [overrides]`` or
``python -m nemo_steerlm.recipes.annotate ...``. Writes ``D/<data stem>.annotated.jsonl``; progress lives in
``D/.annotate_state/`` until the run finishes. With ``num_shards=N shard_index=K`` it writes
``D/shards/shard_0000K.jsonl`` (+ ``.json`` manifest); ``merge_shards=true num_shards=N`` joins them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.formats import read_sft_jsonl
from nemo_steerlm.data.io import sha256_file, write_json_atomic
from nemo_steerlm.recipes.common import inference_layout, is_global_rank_zero, require_path, run_stage, stage_app
from nemo_steerlm.stages import Stage

STATE_DIR = ".annotate_state"


def output_name(data: Path) -> str:
    """``train.jsonl`` -> ``train.annotated.jsonl``."""
    stem = data.name.removesuffix(".gz").removesuffix(".jsonl")
    return f"{stem}.annotated.jsonl"


def layout_overrides(cfg: DictConfig) -> dict[str, Any]:
    """Model-config overrides for the requested layout; the global batch is one micro-batch per replica."""
    return inference_layout(cfg.layout, cfg.layout.micro_batch_size)


def merge(cfg: DictConfig, output_dir: Path, data: Path) -> dict[str, Any]:
    """``merge_shards=true``: joins the shard files (no model needed)."""
    from nemo_steerlm.data.io import read_jsonl
    from nemo_steerlm.inference.annotation import merge_shards

    total = sum(1 for _ in read_jsonl(data))
    target = output_dir / output_name(data)
    rows = merge_shards(output_dir / "shards", cfg.num_shards, total, sha256_file(data), target)
    return {"output": str(target), "rows": rows, "merged_shards": cfg.num_shards}


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Annotates the data (or this shard of it) and writes the output file atomically."""
    from nemo_steerlm.inference import annotation

    data = require_path(cfg, "data", "an SFT JSONL file to label")
    if cfg.merge_shards:
        return merge(cfg, output_dir, data)
    model, model_path, model_sha256 = _scorer(cfg)
    schema = model.schema if model is not None else _schema(model_path)
    conversations = read_sft_jsonl(data, schema)  # bad data fails here, before the model loads or anything is written
    num_shards, shard_index = cfg.num_shards, cfg.shard_index
    start, end = annotation.shard_range(len(conversations), shard_index, num_shards)
    sharded = num_shards > 1
    state_dir = output_dir / "shards" / f".state_{shard_index:05d}" if sharded else output_dir / STATE_DIR
    target = annotation.shard_file(output_dir / "shards", shard_index) if sharded else output_dir / output_name(data)
    identity = annotation.job_identity(model_path, data, cfg.chunk_size, (shard_index, num_shards), model_sha256)
    model = model if model is not None else _restore(model_path, cfg)
    mine = conversations[start:end]
    bar = tqdm(total=len(mine), unit="row", desc="annotate", disable=not (cfg.progress and is_global_rank_zero()))
    paths, stats = annotation.run_chunks(
        model,
        mine,
        state_dir,
        identity,
        cfg.chunk_size,
        cfg.batch_size,
        progress=bar.update,
    )
    bar.close()
    rows = _finish(paths, target, state_dir, identity, (start, end, num_shards)) if is_global_rank_zero() else len(mine)
    return {
        "output": str(target),
        "rows": rows,
        "assistant_turns": stats.turns,
        "truncated_turns": stats.truncated,
        "chunks": stats.chunks_total,
        "chunks_resumed": stats.chunks_resumed,
        "shard": {"index": shard_index, "num_shards": num_shards, "start": start, "end": end},
        "layout": model.model_summary()["layout"],
    }


def _scorer(cfg: DictConfig) -> tuple[Any, Path | None, str | None]:
    """``scorer_url``: the running attribute-model server and its checkpoint digest; else the ``model`` path."""
    if cfg.scorer_url is not None:
        from nemo_steerlm.serving.client import RemoteScorer

        scorer = RemoteScorer(cfg.scorer_url)
        return scorer, None, scorer.sha256
    return None, require_path(cfg, "model", "an attribute model .nemo made by train-apm (model=PATH)"), None


def _schema(model_path: Path) -> AttributeSchema:
    from nemo_steerlm.models.checkpoint import check_kind

    meta = check_kind(model_path, "apm")
    return AttributeSchema(tuple(meta["attributes"]), *meta["value_range"])


def _restore(model_path: Path, cfg: DictConfig) -> Any:
    from nemo_steerlm.models.checkpoint import restore_nemo

    return restore_nemo(model_path, "apm", layout_overrides(cfg))


def _finish(paths: list[Path], target: Path, state_dir: Path, identity: dict, shard: tuple[int, int, int]) -> int:
    """Rank 0: concatenates the chunks into the target, writes a shard's manifest, removes the state."""
    from nemo_steerlm.inference.annotation import concatenate, remove_state

    rows = concatenate(paths, target)
    if shard[2] > 1:
        manifest = {"data_sha256": identity["data_sha256"], "model_sha256": identity["model_sha256"]}
        manifest.update({"start": shard[0], "end": shard[1], "num_shards": shard[2], "rows": rows})
        write_json_atomic(target.with_suffix(".json"), manifest)
    remove_state(state_dir)
    return rows


@stage_app("annotate")
def main(cfg: DictConfig, stage: Stage) -> None:
    """Hydra entry point."""
    if not cfg.merge_shards:  # a merge needs no model: no torchrun, no NeMo or megatron imports
        from nemo_steerlm.recipes.common import relaunch_under_torchrun

        relaunch_under_torchrun(cfg, stage)
    run_stage(stage.name, cfg, body, job_name(cfg))


def job_name(cfg: DictConfig) -> str:
    """The lock and fingerprint name: the shards of one job (and their merge) write one folder side by side."""
    if cfg.merge_shards:
        return "annotate.merge"
    return f"annotate.shard_{cfg.shard_index:05d}" if cfg.num_shards > 1 else "annotate"


if __name__ == "__main__":
    main()
