"""The evaluation layer stays model-agnostic: importing it pulls in neither torch nor megatron."""

import pkgutil
import subprocess
import sys

import nemo_steerlm.evaluation

# every module of the package, found on disk (a new module is covered without editing this list)
MODULES = sorted(m.name for m in pkgutil.iter_modules(nemo_steerlm.evaluation.__path__))


def test_the_list_is_the_whole_package():
    assert {"apm_metrics", "steerability", "mt_bench", "truthfulqa", "perplexity", "report"} <= set(MODULES)
    assert "runner" not in MODULES and "apm_eval" not in MODULES  # the model-running parts live in inference/


def test_no_torch_or_megatron_at_import():
    code = (
        "import sys\n"
        + "".join(f"import nemo_steerlm.evaluation.{m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'lightning'))\n"
        + "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
