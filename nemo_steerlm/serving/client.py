"""A running attribute-model server (``serve model=APM.nemo``) used in place of the model: ``annotate scorer_url=``.

:class:`RemoteScorer` has what annotation reads of an :class:`~nemo_steerlm.models.apm.AttributePredictionModel`
(``schema``, ``labelled_schema``, ``predict_texts``), so
:func:`~nemo_steerlm.inference.annotation.annotate_conversations` runs unchanged: the texts are rendered here,
exactly as with a loaded model, and only the prediction is remote. The server answers with the raw outputs, so the
labels (clipped, rounded half to even) are the ones a loaded model gives.

Library code: plain arguments in, no Hydra config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.errors import UserError

#: texts per request when the caller gives no batch size
DEFAULT_BATCH = 64


class RemoteScorer:
    """An attribute model behind ``url`` (a ``serve`` of an APM ``.nemo``).

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8001``.
        timeout: seconds to wait for one request.
        request_size: texts per request when :meth:`predict_texts` is given no batch size (annotate: progress and
            bounded requests); ``None`` sends them all in one, which the server predicts in exactly the batches of
            the model loaded here (evaluate's numbers are then the loaded model's).

    Raises:
        UserError: naming ``scorer_url`` when the server does not answer or serves no attribute model.
    """

    def __init__(self, url: str, timeout: float = 600.0, request_size: int | None = DEFAULT_BATCH) -> None:
        import httpx

        self.url, self.timeout, self.request_size = url.rstrip("/"), timeout, request_size
        self._http = httpx.Client(timeout=timeout)
        card = self._call("GET", "/v1/models")["data"][0]
        if card.get("kind") != "apm":
            raise UserError(f"scorer_url={url} serves a {card.get('kind')!r} model, not an attribute model (apm)")
        self.name: str = card["id"]
        self.sha256: str = card["sha256"]
        self.schema = AttributeSchema(tuple(card["model_attributes"]), *card["value_range"])
        self.labelled_schema = self.schema.subset(card["attributes"])

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        try:
            res = self._http.request(method, f"{self.url}{path}", json=body)
        except httpx.HTTPError as err:
            raise UserError(f"scorer_url={self.url}: {path}: {err}") from None
        if res.status_code != 200:
            try:
                message = res.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = res.text[:200]
            raise UserError(f"scorer_url={self.url}: {path} answered {res.status_code}: {message}")
        return res.json()

    def predict_texts(
        self, texts: list[str], batch_size: int | None = None, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, int]:
        """Raw scores ``[N, A]`` of regression texts and how many were cut to fit (as the model's own method).

        ``batch_size`` texts per request and per prediction batch; ``None``: ``request_size`` per request, predicted
        in the model's own batches.
        """
        step = batch_size or self.request_size or max(len(texts), 1)
        rows: list[list[float]] = []
        truncated = 0
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            body = {"model": self.name, "texts": chunk, "batch_size": batch_size}
            out = self._call("POST", "/v1/attributes", body)
            rows += out["predictions"]
            truncated += int(out["truncated"])
            if progress is not None:
                progress(len(chunk))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), len(self.schema)), truncated

    def model_summary(self) -> dict[str, Any]:
        """What annotate's summary records of the model: where it ran."""
        return {"layout": {"scorer_url": self.url, "model": self.name}}
