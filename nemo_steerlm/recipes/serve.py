"""Stage ``serve``: an OpenAI-compatible HTTP server for a SteerLM SFT model or an attribute model.

Run ``nemo-steerlm serve model=SFT.nemo port=8000 [steer.verbosity=2 ...]`` or ``python -m nemo_steerlm.recipes.serve
...``. Prints ``nemo-steerlm serve: listening on http://HOST:PORT`` once it answers; stops on Ctrl-C / SIGTERM and
then writes ``output_dir/serve.summary.json``. This recipe only turns the config into typed arguments; the server is
:mod:`nemo_steerlm.serving`.

On a TP/PP layout (``trainer.devices=2 layout.tensor_model_parallel_size=2``; relaunched under ``torchrun`` like
``generate``, or one task per device under ``srun``) global rank 0 serves HTTP and runs the batching worker, and the
other ranks follow its broadcasts (:mod:`nemo_steerlm.serving.followers`). Stopping rank 0 (Ctrl-C, SIGTERM) stops
them all.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.attributes import DEFAULT_STEER, AttributeSchema
from nemo_steerlm.errors import UserError
from nemo_steerlm.ranks import launcher_rank, started_by_launcher, world_size
from nemo_steerlm.recipes.common import (
    accept_steer_overrides,
    inference_layout,
    require_path,
    stage_main,
    steer_overrides,
)


def _socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so that a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        why = err.strerror or err
        raise UserError(f"host={host} port={port}: cannot listen there ({why}); choose another port") from None
    sock.listen(128)
    return sock


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _ignore_stop_signal(signum: int, frame: Any) -> None:
    """A follower rank stops when rank 0 tells it (rank 0 gets the same Ctrl-C or SIGTERM), not amid a call."""


def _check(cfg: DictConfig) -> None:
    tp, pp = cfg.layout.tensor_model_parallel_size, cfg.layout.pipeline_model_parallel_size
    if tp < 1 or pp < 1:
        raise UserError(
            f"layout.tensor_model_parallel_size={tp}, layout.pipeline_model_parallel_size={pp}: must be >= 1"
        )
    world = world_size() if started_by_launcher() else cfg.trainer.devices * cfg.trainer.num_nodes
    if world != tp * pp:
        raise UserError(
            f"serve runs one copy of the model on all its processes: trainer.devices x trainer.num_nodes ({world}) "
            f"must equal layout.tensor_model_parallel_size x layout.pipeline_model_parallel_size ({tp} x {pp})"
        )
    for key in ("max_batch", "max_pending", "default_max_tokens"):
        if cfg[key] < 1:
            raise UserError(f"{key}={cfg[key]}: must be at least 1")
    if cfg.batch_wait_ms < 0:
        raise UserError(f"batch_wait_ms={cfg.batch_wait_ms}: must be >= 0")


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Loads the model, serves until stopped, returns the request counts."""
    import uvicorn

    from nemo_steerlm.models.checkpoint import file_sha256, read_nemo_meta, restore_nemo
    from nemo_steerlm.serving.app import ServerInfo, create_app
    from nemo_steerlm.serving.engine import BatchEngine
    from nemo_steerlm.serving.followers import Peers
    from nemo_steerlm.serving.runners import ScoreRunner, SteerRunner, follow

    _check(cfg)
    model_path = require_path(cfg, "model", "a SteerLM SFT or attribute model .nemo (model=PATH)")
    meta = read_nemo_meta(model_path)
    kind = str(meta.get("kind"))
    if kind not in ("sft", "apm"):
        raise UserError(f"model={model_path}: a {kind!r} model cannot be served (an SFT or attribute model .nemo)")
    schema = AttributeSchema(tuple(meta["attributes"]), *meta["value_range"])
    labelled = schema.subset(meta.get("labelled_attributes") or schema.names)
    defaults = {**DEFAULT_STEER, **steer_overrides(cfg.steer, labelled)} if kind == "sft" else {}
    leader = launcher_rank() == 0
    sock = _socket(cfg.host, cfg.port) if leader else None
    # TP/PP only: the checkpoint's micro batch stays, so an APM predicts texts in the batches a loaded model uses
    layout_keys = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel")
    model = restore_nemo(model_path, kind, {k: inference_layout(cfg.layout, 1)[k] for k in layout_keys})
    peers = Peers.create()
    if peers is not None and not peers.leader:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _ignore_stop_signal)
        return {"followed_calls": follow(model, peers, cfg.max_batch)}
    assert sock is not None  # global rank 0 is launcher rank 0
    host, port = sock.getsockname()[:2]
    peers_stop = peers.stop if peers is not None else None
    runner = SteerRunner(model, cfg.seed, peers) if kind == "sft" else ScoreRunner(model, cfg.max_batch, peers)
    wait_s = cfg.batch_wait_ms / 1000.0
    engine = BatchEngine(runner, cfg.max_batch, cfg.max_pending, wait_s, on_exit=peers_stop)
    name = cfg.model_name if cfg.model_name is not None else model_path.name.removesuffix(".nemo")
    card = {"model_attributes": list(schema.names), "value_range": [schema.min_value, schema.max_value],
            "sha256": file_sha256(model_path)}  # fmt: skip
    seq_length = model.prompt_policy.seq_length
    info = ServerInfo(name, kind, labelled, defaults, cfg.default_max_tokens, seq_length, card=card)

    layout = model.model_summary()["layout"]
    ranks = (
        ""
        if peers is None
        else f" ({peers.world_size} processes, TP={layout['tp']} PP={layout['pp']}; rank 0 pid {os.getpid()})"
    )

    def ready() -> None:
        print(f"nemo-steerlm serve: {kind} model {name!r} listening on http://{host}:{port}{ranks}", flush=True)

    app = create_app(engine, info, ready)
    server = uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, timeout_graceful_shutdown=5))
    previous = signal.signal(signal.SIGTERM, _interrupt)  # uvicorn re-raises the signal that stopped it
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        engine.stop()
        if peers is not None:  # the worker told the other ranks to stop when it ended; without a worker, tell them
            if engine.started:
                engine.join()
            else:
                peers.stop()
    return {"model": str(model_path), "kind": kind, "model_name": name, "url": f"http://{host}:{port}",
            "default_label": info.default_label, "layout": layout, **engine.snapshot()}  # fmt: skip


main = stage_main("serve", body, relaunch=True, argv=accept_steer_overrides)


if __name__ == "__main__":
    main()
