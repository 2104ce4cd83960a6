"""Stage ``evaluate``: APM metrics, steerability, MT-Bench answers, TruthfulQA and perplexity into ``report.md``.

Run ``nemo-steerlm evaluate model=SFT.nemo apm=APM.nemo data=PREPARED [overrides]``. Every number in the report
comes from ``results.json`` and the files next to it. ``scorer_url=URL`` in place of ``apm=`` scores with a running
``serve model=APM.nemo`` instead of loading the attribute model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from nemo_steerlm.errors import MissingInputError, UserError
from nemo_steerlm.recipes.common import (
    accept_steer_overrides,
    sampling_params,
    stage_main,
    steer_overrides,
)

if TYPE_CHECKING:
    from nemo_steerlm.models.apm import AttributePredictionModel
    from nemo_steerlm.models.sft import SteerLMSFTModel


def _inputs(cfg: DictConfig) -> tuple[Path | None, Path | None, Path | None]:
    """``(sft, apm, data)`` paths; an APM given as ``model=`` counts as ``apm=`` (none with ``scorer_url``)."""
    from nemo_steerlm.models.checkpoint import read_nemo_meta

    sft = Path(cfg.model) if cfg.model is not None else None
    apm = Path(cfg.apm) if cfg.apm is not None else None
    if sft is not None and read_nemo_meta(sft).get("kind") == "apm":
        sft, apm = None, apm or sft
    if apm is not None:
        read_nemo_meta(apm)
    data = Path(cfg.data) if cfg.data is not None else None
    remote = cfg.scorer_url is not None
    if remote and apm is not None:
        raise UserError(f"scorer_url={cfg.scorer_url} and apm={apm}: give one attribute model, not both")
    if sft is None and apm is None and not remote:
        raise MissingInputError("evaluate needs model=SFT.nemo and/or apm=APM.nemo (or scorer_url=URL)")
    if data is not None and not (data / "manifest.json").exists():
        raise MissingInputError(f"data={data}: not a `prepare` output folder (no manifest.json)")
    if (apm is not None or remote) and data is None:
        raise MissingInputError("APM metrics need data=PREPARED (a `prepare` output folder)")
    if cfg.steerability.prompts not in ("heldout", "mt_bench"):
        raise UserError(
            f"steerability.prompts={cfg.steerability.prompts}: use heldout (data's sft/val.jsonl) or mt_bench"
        )
    if sft is not None and cfg.steerability.enabled and cfg.steerability.prompts == "heldout" and data is None:
        raise MissingInputError(
            "steerability needs held-out prompts: pass data=PREPARED (or steerability.enabled=false)"
        )
    if cfg.steerability.reference is not None and not Path(cfg.steerability.reference).is_file():
        raise MissingInputError(
            f"steerability.reference={cfg.steerability.reference}: no such file (the SFT's training JSONL, or null)"
        )
    return sft, apm, data


def _judge(cfg: DictConfig) -> Any:
    """The optional MT-Bench judge client (``mt_bench.judge.enabled``), off by default."""
    if not cfg.enabled:
        return None
    if cfg.base_url is None:
        raise MissingInputError("mt_bench.judge.enabled=true needs mt_bench.judge.base_url=URL (OpenAI-compatible)")
    from nemo_steerlm.evaluation.mt_bench import OpenAIChatJudge

    return OpenAIChatJudge(cfg.base_url, cfg.model, cfg.api_key_env)


def _steer_prompts(cfg: DictConfig, sft: SteerLMSFTModel, val: Path | None) -> list[Any]:
    """The first ``num_prompts`` prompts of ``steerability.prompts``: held-out SFT prompts or MT-Bench first turns."""
    from nemo_steerlm.attributes import USER_ROLE
    from nemo_steerlm.data.formats import read_sft_jsonl
    from nemo_steerlm.data.template import Conversation, Turn
    from nemo_steerlm.evaluation import mt_bench
    from nemo_steerlm.inference import runner

    n = cfg.num_prompts
    if cfg.prompts == "mt_bench":
        return [Conversation([Turn(q["turns"][0], USER_ROLE, None)]) for q in mt_bench.load_questions()[:n]]
    return runner.distinct_prompts(read_sft_jsonl(val, sft.schema))[:n]


def _reference_file(cfg: DictConfig, data: Path | None) -> Path | None:
    """``steerability.reference`` (checked in :func:`_inputs`), else the prepared ``sft/train.jsonl`` (or ``None``)."""
    if cfg.reference is not None:
        return Path(cfg.reference)
    return data / "sft" / "train.jsonl" if data is not None else None


def _warn_unseen(steer: dict[str, Any]) -> None:
    """Says which requested label values the SFT training data never holds (the sweep asks the model to extrapolate)."""
    for attribute, summary in steer.items():
        coverage = (summary.get("data_reference") or {}).get("coverage")
        if coverage and coverage["unseen"]:
            print(
                f"evaluate: the {attribute} sweep asks for {', '.join(coverage['unseen'])}, which none of the "
                f"{coverage['turns']} labelled training turns has; steer.NAME=V sets an attribute the sweep holds "
                "fixed to a level the data has"
            )


def _sft_sections(
    cfg: DictConfig,
    sft: SteerLMSFTModel,
    apm: AttributePredictionModel,
    data: Path | None,
    out: Path,
    timings: dict,
    judge: Any,
    steer: dict[str, int],
) -> dict:
    """Steerability, MT-Bench, TruthfulQA and perplexity of the SFT model (``steer``: the checked ``steer.*``)."""
    from nemo_steerlm.data.io import dump_json_line, write_jsonl_atomic
    from nemo_steerlm.evaluation.steerability import PLOT_FILE
    from nemo_steerlm.inference import runner

    results: dict[str, Any] = {}
    params, label = sampling_params(cfg.generation, "generation"), sft.labelled_schema.steer_label(steer)
    val = data / "sft" / "val.jsonl" if data is not None else None
    if cfg.steerability.enabled:
        t = time.perf_counter()
        prompts = _steer_prompts(cfg.steerability, sft, val)
        attrs = [str(a) for a in cfg.steerability.attributes if str(a) in sft.labelled_schema]
        skipped = [str(a) for a in cfg.steerability.attributes if str(a) not in sft.labelled_schema]
        if skipped:
            print(f"evaluate: steerability skips {skipped}: the SFT model's labels never held them")
            results["steerability_skipped"] = skipped
        train = _reference_file(cfg.steerability, data)
        levels = list(cfg.steerability.levels)
        res, records = runner.run_steerability(sft, apm, prompts, attrs, levels, params, out, train, steer)
        write_jsonl_atomic(out / "steer_responses.jsonl", (dump_json_line(r) for r in records))
        _warn_unseen(res)
        results["steerability"], timings["steerability"] = res, time.perf_counter() - t
        results.setdefault("plots", {})["steerability"] = PLOT_FILE
    reference = _reference_file(cfg.steerability, data)
    if cfg.conditioning.enabled and reference is not None:
        t = time.perf_counter()
        results["conditioning"] = runner.run_conditioning(sft, reference, cfg.conditioning.max_groups)
        timings["conditioning"] = time.perf_counter() - t
    if cfg.mt_bench.enabled:
        t = time.perf_counter()
        results["mt_bench"] = runner.run_mt_bench(
            sft,
            label,
            params,
            out / "mt_bench" / f"{cfg.mt_bench.model_id}.jsonl",
            cfg.mt_bench.model_id,
            judge,
        )
        timings["mt_bench"] = time.perf_counter() - t
    if cfg.truthfulqa.enabled:
        t = time.perf_counter()
        results["truthfulqa"] = runner.run_truthfulqa(sft, label, cfg.truthfulqa.max_questions)
        timings["truthfulqa"] = time.perf_counter() - t
    if cfg.perplexity.enabled and val is not None:
        t = time.perf_counter()
        results["perplexity"] = runner.run_perplexity(sft, val)
        timings["perplexity"] = time.perf_counter() - t
    return results


def stage_timings(run_dir: Path) -> dict[str, float]:
    """Seconds of each finished stage of a ``run`` folder (from the stages' summary files)."""
    import json

    out: dict[str, float] = {}
    for summary in sorted(run_dir.glob("*/*.summary.json")):
        data = json.loads(summary.read_text(encoding="utf-8"))
        out[f"stage {data['stage']}"] = float(data["seconds"])
    return out


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Runs the configured evaluations and writes ``report.md`` and ``results.json``."""
    from nemo_steerlm.evaluation.analysis import report_section
    from nemo_steerlm.evaluation.apm_metrics import PLOT_FILE
    from nemo_steerlm.evaluation.report import package_versions, write_report
    from nemo_steerlm.inference.apm_eval import evaluate_apm
    from nemo_steerlm.models.checkpoint import restore_nemo

    sft_path, apm_path, data = _inputs(cfg)
    judge = _judge(cfg.mt_bench.judge) if sft_path is not None and cfg.mt_bench.enabled else None
    sft = restore_nemo(sft_path, "sft") if sft_path is not None else None
    steer = steer_overrides(cfg.steer, sft.labelled_schema) if sft is not None else {}  # before any output
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"inputs": {"model": str(sft_path), "apm": str(apm_path), "data": str(data)}}
    timings: dict[str, float] = {}
    apm = restore_nemo(apm_path, "apm") if apm_path is not None else None
    if cfg.scorer_url is not None:
        from nemo_steerlm.serving.client import RemoteScorer

        apm = RemoteScorer(cfg.scorer_url, request_size=None)  # one request: the loaded model's batches
        results["inputs"].update(apm=f"{apm.url} ({apm.name}, sha256 {apm.sha256})", scorer_url=apm.url)
    if apm is not None:
        t = time.perf_counter()
        results["apm"] = evaluate_apm(
            apm, data / "regression" / "val.jsonl", data / "regression" / "train.jsonl", output_dir
        )
        results.setdefault("plots", {})["apm"] = PLOT_FILE
        timings["apm_metrics"] = time.perf_counter() - t
    if sft is not None:
        sections = _sft_sections(cfg, sft, apm, data, output_dir, timings, judge, steer)
        plots = {**results.get("plots", {}), **sections.pop("plots", {})}
        results.update(sections, plots=plots)
    results["versions"], results["timings"] = package_versions(), {k: round(v, 2) for k, v in timings.items()}
    if cfg.run_dir is not None:
        results["timings"] = {**stage_timings(Path(cfg.run_dir)), **results["timings"]}
        analysis = report_section(Path(cfg.run_dir) / "analyze")
        if analysis is not None:
            results["data_analysis"] = analysis
    report, _ = write_report(results, output_dir, OmegaConf.to_yaml(cfg))
    print(f"nemo-steerlm evaluate: report -> {report}")
    return {"report": str(report), "timings": results["timings"]}


main = stage_main("evaluate", body, argv=accept_steer_overrides)


if __name__ == "__main__":
    main()
