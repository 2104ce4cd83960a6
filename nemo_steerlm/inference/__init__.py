"""Inference layer of nemo-steerlm: runs trained models over inputs.

The model-running half of evaluation: :mod:`~nemo_steerlm.inference.runner` generates with the SFT model (and
scores with the APM) for steerability, MT-Bench, TruthfulQA, perplexity and the conditioning check;
:mod:`~nemo_steerlm.inference.apm_eval` predicts a regression file with the APM. Both hand plain arrays and texts
to the model-agnostic metrics of :mod:`nemo_steerlm.evaluation` and write the files those metrics name.
:mod:`~nemo_steerlm.inference.annotation` labels SFT data with the APM (the ``annotate`` stage) and
:mod:`~nemo_steerlm.inference.bootstrap` samples from the SFT model and annotates the answers.

May import ``models/``, ``megatron/``, ``data/`` and ``evaluation/``; only ``recipes/`` and ``serving/`` import it.
"""
