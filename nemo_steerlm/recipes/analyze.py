"""Stage ``analyze``: the HelpSteer paper's dataset analysis (distributions, correlations, length, OLS), no model.

Run ``nemo-steerlm analyze [dataset=NAME dataset.path=FILE | data=JSONL] output_dir=D``; writes ``D/analysis.json``,
``D/analysis.md`` and its PNG plots (see :mod:`nemo_steerlm.evaluation.analysis`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.errors import MissingInputError, UserError
from nemo_steerlm.recipes.common import schema_from_cfg, stage_main
from nemo_steerlm.recipes.prepare import prepare_spec_from_cfg


def _read(cfg: DictConfig, schema: Any) -> Any:
    """The labelled rows of ``data=`` (a JSONL file or a ``prepare`` folder), else of the ``dataset`` group."""
    from nemo_steerlm.evaluation import analysis

    if cfg.data is not None:
        path = Path(cfg.data)
        if path.is_dir():
            if not (path / "sft" / "train.jsonl").is_file() or not (path / "sft" / "val.jsonl").is_file():
                raise MissingInputError(
                    f"data={path}: not a `prepare` output folder (no sft/train.jsonl, sft/val.jsonl)"
                )
            return analysis.read_prepared_folder(path, schema)
        if not path.exists():
            raise MissingInputError(f"data={path}: no such file or folder (an SFT or regression JSONL file)")
        return analysis.read_labelled_jsonl(path, schema)
    spec = prepare_spec_from_cfg(cfg.dataset)
    for i, src in enumerate(spec.sources):
        if src.name not in ("helpsteer", "helpsteer2", "oasst"):
            key = "dataset.name" if i == 0 else f"dataset.extra_sources[{i - 1}].name"
            raise UserError(f"{key}={src.name}: choose helpsteer, helpsteer2 or oasst")
    return analysis.read_sources([(s.name, s.path) for s in spec.sources], schema)


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Reads the input, then writes ``analysis.json``, ``analysis.md`` and the plots into ``output_dir``."""
    from nemo_steerlm.evaluation.analysis import write_analysis

    schema = schema_from_cfg(cfg)
    data = _read(cfg, schema)
    if not data.rows:
        where = f"data={cfg.data}" if cfg.data is not None else f"dataset.path={data.source}"
        raise UserError(f"{where}: no assistant turn carries a label of {', '.join(schema.names)}; nothing to analyse")
    result = write_analysis(data, schema, output_dir)
    print(f"nemo-steerlm analyze: {result['rows']} rows -> {output_dir / 'analysis.md'}")
    return {
        "analysis": str(output_dir / "analysis.json"),
        "report": str(output_dir / "analysis.md"),
        "rows": result["rows"],
        "unlabelled_turns": data.unlabelled_turns,
        "input": data.source,
    }


main = stage_main("analyze", body)


if __name__ == "__main__":
    main()
