"""Inference layer of nemo-steerlm: runs trained models over evaluation inputs.

The model-running half of evaluation: :mod:`~nemo_steerlm.inference.runner` generates with the SFT model (and
scores with the APM) for steerability, MT-Bench, TruthfulQA, perplexity and the conditioning check;
:mod:`~nemo_steerlm.inference.apm_eval` predicts a regression file with the APM. Both hand plain arrays and texts
to the model-agnostic metrics of :mod:`nemo_steerlm.evaluation` and write the files those metrics name.

May import ``models/``, ``megatron/``, ``data/`` and ``evaluation/``; only ``recipes/`` import it.
"""
