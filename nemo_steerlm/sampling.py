"""How generation picks tokens: :class:`SamplingParams`, the one type of every stage's sampling section.

Torch-free: the config schemas (:mod:`nemo_steerlm.config_schema`) use it as the schema of ``generate``'s and
``bootstrap``'s ``sampling`` and ``evaluate``'s ``generation`` sections, so Hydra checks their types at compose time
and the recipes read it with ``OmegaConf.to_object`` (the checks below run then); the generation code
(:mod:`nemo_steerlm.models.generation`) and the server take it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_steerlm.attributes import TURN_MARKER
from nemo_steerlm.errors import UserError


@dataclass
class SamplingParams:
    """How to pick tokens.

    Not frozen: a frozen dataclass makes a read-only config node that Hydra cannot merge a stage's YAML into.

    Args:
        max_new_tokens: the most tokens generated per prompt.
        greedy: always take the most likely token (``temperature``, ``top_k``, ``top_p`` are then ignored).
        temperature: softmax temperature (> 0).
        top_k: keep only the ``k`` most likely tokens (``0`` = all).
        top_p: keep the smallest set of tokens whose probability reaches ``p`` (``1.0`` = all).
        seed: seed of the sampling generator (the same on every rank).
        batch_size: prompts per generation batch (per data-parallel replica).
        use_cache: use the KV cache; ``False`` recomputes the whole sequence every step (for checks).
        stop_text: generation of a prompt stops once its decoded continuation contains this text.
    """

    max_new_tokens: int = 128
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1234
    batch_size: int = 8
    use_cache: bool = True
    stop_text: str = TURN_MARKER

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens={self.max_new_tokens}: must be at least 1")
        if not self.greedy and self.temperature <= 0:
            raise UserError(f"temperature={self.temperature}: must be > 0 (or set greedy=true)")
        if self.top_k < 0:
            raise UserError(f"top_k={self.top_k}: must be >= 0 (0 = no top-k filter)")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.batch_size < 1:
            raise UserError(f"batch_size={self.batch_size}: must be at least 1")
