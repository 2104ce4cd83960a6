"""Serving SteerLM models over HTTP: an OpenAI-compatible API with attribute steering, and attribute scoring.

``protocol`` reads requests and writes error bodies, ``engine`` batches concurrent requests on one worker thread,
``runners`` run those batches through the library's generation and annotation code, ``app`` is the FastAPI app.
The ``serve`` stage (:mod:`nemo_steerlm.recipes.serve`) puts them together from its config.
"""
