"""Evaluation layer of nemo-steerlm: model-agnostic metrics, benchmarks, plots and the report.

Modules: ``apm_metrics`` (APM vs baselines), ``steerability`` (steering sweeps), ``mt_bench`` (FastChat answers and
an optional LLM judge), ``truthfulqa`` (MC1/MC2), ``perplexity`` and ``report``. Models are passed in as plain
callables; nothing here imports torch or megatron. See ``docs/evaluation.md``.
"""
