"""The evaluation layer stays model-agnostic: importing it pulls in neither torch nor megatron."""

import subprocess
import sys

MODULES = ["apm_metrics", "steerability", "mt_bench", "truthfulqa", "perplexity", "report", "analysis", "comparison"]


def test_no_torch_or_megatron_at_import():
    code = (
        "import sys\n"
        + "".join(f"import nemo_steerlm.evaluation.{m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'lightning'))\n"
        + "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
