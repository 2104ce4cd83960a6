"""Dynamic batching: one worker thread runs the model on batches of the requests waiting, under a bounded admission.

HTTP handlers :meth:`BatchEngine.submit` a :class:`Job` and wait for the events the worker sends back through the job's
``emit``. The worker takes the oldest waiting job, waits ``batch_wait_s`` for company, and runs it together with the
other waiting jobs of the same batch key (requests whose sampling settings can share one generation batch), up to
``max_batch`` rows. At most ``max_pending`` jobs are admitted at once (waiting or running): one more is refused with
:class:`Overloaded` (the server answers 503) instead of queueing without bound. A job whose client went away is
:meth:`cancelled <BatchEngine.cancel>`: it leaves the queue, or its rows stop at their next token, its slot free at
once.

Library code: plain arguments in, no Hydra config.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

#: an event for a job's handler: ``("accepted", None)`` (its prompts fit; generation starts), ``("delta", choice,
#: text)``, ``("done", result)`` or ``("error", exception)``
Event = tuple[Any, ...]


class Overloaded(Exception):
    """Every admission slot is taken: the request is refused (HTTP 503)."""


@dataclass(eq=False)
class Job:
    """One request for the worker.

    Args:
        key: requests with equal keys may run in one batch.
        payload: what the batch runner needs (the read request).
        rows: the batch rows the job takes (prompts × choices).
        emit: delivers an event to the waiting handler (thread-safe; called from the worker).
    """

    key: Hashable
    payload: Any
    rows: int
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False

    def send(self, event: Event) -> None:
        """Emits ``event`` unless the job was cancelled; a ``done`` or ``error`` event finishes the job."""
        if event[0] in ("done", "error"):
            self.finished = True
        if not self.cancelled.is_set():
            self.emit(event)


#: runs one batch of jobs on the model and sends each job its events (``done`` or ``error`` at the end)
BatchRunner = Callable[[list[Job]], None]


class BatchEngine:
    """The queue and the worker thread.

    Args:
        run_batch: runs a batch of jobs of one key (called on the worker thread only).
        max_batch: the most rows of one batch (a job larger than this runs alone).
        max_pending: the most jobs admitted at once, waiting or running.
        batch_wait_s: how long the worker waits after the first job for others to join its batch.
        on_exit: called on the worker thread when it stops (after its last batch): a TP/PP server tells the other
            ranks to stop from the thread that made their calls.
    """

    def __init__(
        self,
        run_batch: BatchRunner,
        max_batch: int,
        max_pending: int,
        batch_wait_s: float,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or batch_wait_s < 0:
            raise ValueError("max_batch and max_pending must be >= 1 and batch_wait_s >= 0")
        self.run_batch, self.max_batch, self.max_pending, self.batch_wait_s = (
            run_batch,
            max_batch,
            max_pending,
            batch_wait_s,
        )
        self._queue: collections.deque[Job] = collections.deque()
        self._pending: set[Job] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.on_exit = on_exit
        self.stats = {"admitted": 0, "rejected": 0, "cancelled": 0, "batches": 0, "rows": 0, "largest_batch": 0}

    # --- the handlers' side -----------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queues ``job``; raises :class:`Overloaded` when ``max_pending`` jobs are already admitted."""
        with self._cond:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if len(self._pending) >= self.max_pending:
                self.stats["rejected"] += 1
                raise Overloaded(f"{len(self._pending)} requests are in progress (the most this server admits)")
            self._pending.add(job)
            self._queue.append(job)
            self.stats["admitted"] += 1
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """Withdraws a job whose client went away: out of the queue, or its rows stop; its slot is free at once."""
        with self._cond:
            if job.finished or job.cancelled.is_set():
                return
            job.cancelled.set()
            self.stats["cancelled"] += 1
            if job in self._queue:
                self._queue.remove(job)
            self._pending.discard(job)

    def snapshot(self) -> dict[str, int]:
        """The counters: admitted, rejected, cancelled, batches, rows, largest batch, and the runner's ``stats``."""
        return {**self.stats, **getattr(self.run_batch, "stats", {})}

    @property
    def pending(self) -> int:
        """Jobs admitted and not finished or cancelled."""
        with self._cond:
            return len(self._pending)

    # --- the worker ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the worker thread."""
        self._thread = threading.Thread(target=self._work, name="nemo-steerlm-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the worker after its current batch; queued jobs get an error event."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in left:
            job.send(("error", Overloaded("the server is shutting down")))
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first_seen = time.monotonic()
        if self.batch_wait_s > 0:  # let concurrent requests join (outside the lock: handlers keep submitting)
            time.sleep(max(self.batch_wait_s - (time.monotonic() - first_seen), 0.0))
        with self._cond:
            if not self._queue:
                return []
            key, batch, rows = self._queue[0].key, [], 0
            for job in list(self._queue):
                if job.key == key and (not batch or rows + job.rows <= self.max_batch):
                    batch.append(job)
                    rows += job.rows
                    self._queue.remove(job)
            return batch

    @property
    def started(self) -> bool:
        """Whether the worker thread was started."""
        return self._thread is not None

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the worker thread to end (after :meth:`stop`); whether it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _work(self) -> None:
        try:
            self._serve()
        finally:
            if self.on_exit is not None:
                self.on_exit()

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            rows = sum(j.rows for j in batch)
            self.stats["batches"] += 1
            self.stats["rows"] += rows
            self.stats["largest_batch"] = max(self.stats["largest_batch"], rows)
            try:
                self.run_batch(batch)
            except Exception as err:  # noqa: BLE001 - a failed batch answers its requests with a 500, the server lives
                for job in batch:
                    if not job.finished:
                        job.send(("error", err))
            finally:
                with self._cond:
                    for job in batch:
                        self._pending.discard(job)
