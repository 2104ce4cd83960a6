"""The ablation comparison table, built from run folders whose results.json the real evaluation functions wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nemo_steerlm.data.io import DataError
from nemo_steerlm.evaluation.apm_metrics import compute_apm_metrics
from nemo_steerlm.evaluation.comparison import compare_runs, read_run_results, write_comparison
from nemo_steerlm.evaluation.perplexity import perplexity
from nemo_steerlm.evaluation.report import write_report
from nemo_steerlm.evaluation.steerability import compute_steerability
from nemo_steerlm.evaluation.truthfulqa import evaluate_truthfulqa, load_truthfulqa

HS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
TQA = Path(__file__).resolve().parents[1] / "data" / "eval" / "truthfulqa_tiny.csv"


def fake_run(root: Path, names: list[str], seed: int) -> tuple[Path, dict]:
    """A run folder with evaluate/results.json and report.md written by the real evaluation code on random inputs."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 5, (30, len(names))).astype(float)
    preds = targets + rng.normal(0, 1.0 + seed, targets.shape)
    apm = compute_apm_metrics(
        preds, targets, names, rng.integers(0, 5, (50, len(names))), rng.integers(1, 300, 50), rng.integers(1, 300, 30)
    )
    sweeps = {}
    for attr in [a for a in ("verbosity", "helpfulness") if a in names]:
        sweeps[attr] = [
            (lvl, " ".join(["w"] * int(rng.integers(1, 40))), float(rng.normal(lvl, 1))) for lvl in range(5)
        ]
    items = load_truthfulqa(TQA)
    tqa = evaluate_truthfulqa(items, lambda ctx, cont: [float(rng.normal()) for _ in cont], lambda q: q)
    nll = list(rng.uniform(10, 20, 4))
    ppl = perplexity(nll, [5, 6, 7, 8])
    results = {"apm": apm, "steerability": compute_steerability(sweeps), "truthfulqa": tqa, "perplexity": ppl}
    write_report(results, root / "evaluate")
    return root, {"preds": preds, "targets": targets, "sweeps": sweeps, "tqa": tqa, "nll": nll}


@pytest.fixture
def runs(tmp_path: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    base, base_raw = fake_run(tmp_path / "baseline", HS, 0)
    ablated, ablated_raw = fake_run(tmp_path / "no_helpfulness", HS[1:], 1)
    return {"baseline": base, "no_helpfulness": ablated}, {"baseline": base_raw, "no_helpfulness": ablated_raw}


def test_comparison_numbers_come_from_each_run(runs: tuple[dict[str, Path], dict[str, dict]], tmp_path: Path) -> None:
    dirs, raw = runs
    drop = {"baseline": [], "no_helpfulness": ["helpfulness"]}
    comp = write_comparison(dirs, drop, tmp_path)
    assert comp["runs"] == ["baseline", "no_helpfulness"] and comp["drop"] == drop
    for name, names in (("baseline", HS), ("no_helpfulness", HS[1:])):
        for col, attr in enumerate(names):
            p, t = raw[name]["preds"][:, col], raw[name]["targets"][:, col]
            assert comp["apm"][attr]["pearson"][name] == pytest.approx(stats.pearsonr(p, t)[0])
            assert comp["apm"][attr]["mae"][name] == pytest.approx(np.abs(p - t).mean())
        words = [(lvl, len(text.split())) for lvl, text, _ in raw[name]["sweeps"]["verbosity"]]
        rho = stats.spearmanr([w[0] for w in words], [w[1] for w in words])[0]
        assert comp["steerability"]["verbosity"]["words"][name] == pytest.approx(rho)
        assert comp["truthfulqa"]["mc1"][name] == pytest.approx(raw[name]["tqa"]["mc1"])
        assert comp["truthfulqa"]["mc2"][name] == pytest.approx(raw[name]["tqa"]["mc2"])
        assert comp["perplexity"][name] == pytest.approx(math.exp(sum(raw[name]["nll"]) / 26))
    # the attribute a run trained without: no APM output, no sweep
    assert comp["apm"]["helpfulness"]["pearson"]["no_helpfulness"] is None
    assert comp["steerability"]["helpfulness"]["words"]["no_helpfulness"] is None
    assert "mt_bench" not in comp  # nobody was judged
    assert json.loads((tmp_path / "comparison.json").read_text()) == comp


def test_comparison_markdown(runs: tuple[dict[str, Path], dict[str, dict]], tmp_path: Path) -> None:
    dirs, _ = runs
    comp = write_comparison(dirs, {"baseline": [], "no_helpfulness": ["helpfulness"]}, tmp_path)
    md = (tmp_path / "comparison.md").read_text(encoding="utf-8")
    assert "| baseline | (baseline) | [report](baseline/evaluate/report.md) |" in md
    assert "| no_helpfulness | helpfulness | [report](no_helpfulness/evaluate/report.md) |" in md
    hp = comp["apm"]["helpfulness"]["pearson"]
    assert f"| helpfulness | pearson | {hp['baseline']:.3f} | — |" in md
    mc1 = comp["truthfulqa"]["mc1"]
    assert f"| TruthfulQA MC1 | {mc1['baseline']:.3f} | {mc1['no_helpfulness']:.3f} |" in md


def test_judged_mt_bench_is_compared_and_missing_results_fail(tmp_path: Path) -> None:
    runs = {"a": {"mt_bench": {"judge": {"overall": 6.5}}}, "b": {}}
    comp = compare_runs(runs, {"a": [], "b": ["verbosity"]})
    assert comp["mt_bench"] == {"a": 6.5, "b": None}
    assert comp["truthfulqa"]["mc1"] == {"a": None, "b": None}
    with pytest.raises(DataError, match=r"evaluate/results\.json: missing"):
        read_run_results(tmp_path / "nothing")
