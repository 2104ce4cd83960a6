"""Serving on a tensor/pipeline-parallel layout: global rank 0 leads, the other ranks follow its broadcasts.

Rank 0 runs the HTTP server and the batching worker. Before each model call the worker broadcasts the call (its name
and inputs: the prompts' token ids and the sampling settings, or the texts to score) on a gloo group of all ranks,
and every rank then makes the same call, so megatron's tensor- and pipeline-parallel collectives match. What only
rank 0 knows during a generation (a client went away, a request's stop string appeared) is broadcast once per decode
step (:meth:`Peers.agree`), so every rank stops the same rows and runs the same steps. When the worker stops it
broadcasts ``stop`` and the followers return.

The control group is gloo whatever the model's backend (NCCL on GPU), with a long timeout: a follower waits for the
next request as long as the server stays idle. A follower whose leader died gets an error from gloo (and ``torchrun``
stops a job whose rank exited).

Library code: plain arguments in, no Hydra config.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

#: the message that ends the followers' loop
STOP = "stop"
#: how long a follower waits for the leader's next message (an idle server sends none)
IDLE_TIMEOUT = datetime.timedelta(days=365)

log = logging.getLogger(__name__)


class Peers:
    """All ranks of the job, on a gloo group of their own; global rank 0 sends, the others receive.

    Use :meth:`create` (collective: every rank calls it, after ``torch.distributed`` is initialised).
    """

    def __init__(self, group: Any, world_size: int) -> None:
        self.group, self.world_size = group, world_size

    @classmethod
    def create(cls) -> Peers | None:
        """The peers of this job, or ``None`` in a world of one (nothing to broadcast)."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return None
        return cls(dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT), dist.get_world_size())

    @property
    def leader(self) -> bool:
        """Whether this is global rank 0 (the one with the HTTP server)."""
        return dist.get_rank() == 0

    def send(self, kind: str, *args: Any) -> None:
        """Rank 0: tells the followers to make call ``kind`` with ``args`` (then makes it itself)."""
        dist.broadcast_object_list([(kind, args)], src=0, group=self.group)

    def receive(self) -> tuple[str, tuple[Any, ...]]:
        """A follower: the next call rank 0 sends (blocks while the server is idle)."""
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree(self, requested: list[bool]) -> list[bool]:
        """Rank 0's stop requests, on every rank (a :data:`~nemo_steerlm.models.generation.StopAgreement`)."""
        flags = torch.tensor(requested, dtype=torch.uint8)
        dist.broadcast(flags, src=0, group=self.group)
        return [bool(x) for x in flags.tolist()]

    def stop(self) -> None:
        """Rank 0: ends the followers' loop."""
        self.send(STOP)

    def follow(self, handlers: dict[str, Callable[..., Any]]) -> int:
        """A follower's loop: makes every call rank 0 sends until it sends ``stop``; returns how many it made.

        A call that raises is logged and the loop goes on: rank 0 made the same call and got the same error (its
        requests are answered with a 500), so the ranks stay in step.
        """
        calls = 0
        while True:
            kind, args = self.receive()
            if kind == STOP:
                return calls
            calls += 1
            try:
                handlers[kind](*args)
            except Exception:  # noqa: BLE001 - the leader answers the failure; the follower stays in step
                log.exception("rank %d: call %r failed", dist.get_rank(), kind)
