"""nemo-steerlm: SteerLM (attribute model, annotation, conditioned SFT, steering) on NeMo and megatron-core."""

__version__ = "0.1.0"
