"""Checks a chain before anything is submitted: step names, inputs, and each distributed step's model layout.

A Megatron job with ``nodes × devices`` processes needs ``TP·PP`` to divide the world size and the global batch to
be a multiple of ``micro batch × data-parallel size``; finding out after hours in the queue is the expensive way.
"""

from __future__ import annotations

import re

from launchers.spec import ChainSpec, ClusterSpec, LaunchError, StepSpec

_STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def devices_per_node(step: StepSpec, cluster: ClusterSpec) -> int:
    """Tasks per node of ``step``: its own ``devices_per_node`` or the cluster's; 1 for a non-distributed step."""
    if not step.distributed:
        return 1
    return step.devices_per_node if step.devices_per_node is not None else cluster.devices_per_node


def check_layout(step: StepSpec, cluster: ClusterSpec) -> None:
    """Raises :class:`LaunchError` when the step's model layout cannot run on ``nodes × devices_per_node`` devices.

    Args:
        step: a distributed step with its resolved :class:`~launchers.spec.Layout`.
        cluster: gives ``devices_per_node`` when the step does not set it.
    """
    if not step.distributed or step.layout is None:
        return
    lay = step.layout
    per_node = devices_per_node(step, cluster)
    world = step.nodes * per_node
    where = f"step {step.name!r} (launch.steps.{step.name})"
    devices_key = (
        f"launch.steps.{step.name}.devices_per_node"
        if step.devices_per_node is not None
        else "cluster.devices_per_node"
    )
    for key, value in (
        ("model.tensor_model_parallel_size", lay.tensor_model_parallel_size),
        ("model.pipeline_model_parallel_size", lay.pipeline_model_parallel_size),
    ):
        if value < 1:
            raise LaunchError(f"{where}: {key}={value} must be at least 1")
    model_parallel = lay.tensor_model_parallel_size * lay.pipeline_model_parallel_size
    if world % model_parallel:
        raise LaunchError(
            f"{where}: model.tensor_model_parallel_size={lay.tensor_model_parallel_size} × "
            f"model.pipeline_model_parallel_size={lay.pipeline_model_parallel_size} = {model_parallel} does not divide "
            f"trainer.num_nodes={step.nodes} × trainer.devices={per_node} = {world} devices "
            f"(change launch.steps.{step.name}.nodes, {devices_key} or the parallel sizes)"
        )
    if lay.global_batch_size is None or lay.micro_batch_size is None:
        return
    data_parallel = world // model_parallel
    if lay.micro_batch_size < 1 or lay.global_batch_size % (lay.micro_batch_size * data_parallel):
        raise LaunchError(
            f"{where}: model.global_batch_size={lay.global_batch_size} is not a multiple of "
            f"model.micro_batch_size={lay.micro_batch_size} × data-parallel size {data_parallel} "
            f"(= {world} devices / TP·PP {model_parallel}); change model.global_batch_size or model.micro_batch_size"
        )


def check_chain(chain: ChainSpec, cluster: ClusterSpec, for_submit: bool) -> None:
    """Validates a whole chain; raises :class:`LaunchError` naming the key to change.

    Args:
        chain: the chain to check.
        cluster: the target cluster.
        for_submit: also check what only matters for a real submission (nodes available on the cluster).
    """
    if not chain.steps:
        raise LaunchError("launch.steps is empty: nothing to launch")
    seen: set[str] = set()
    for step in chain.steps:
        if not _STEP_NAME.match(step.name):
            raise LaunchError(f"launch.steps.{step.name}: a step name is letters, digits, '_' or '-'")
        for key, source in step.inputs.items():
            source_step = source.split("/", 1)[0]
            if source_step not in seen:
                raise LaunchError(
                    f"launch.steps.{step.name}.inputs.{key}={source!r}: {source_step!r} is not an earlier step "
                    f"(earlier: {', '.join(sorted(seen)) or 'none'})"
                )
        if step.nodes < 1 or (not step.distributed and step.nodes != 1):
            raise LaunchError(f"launch.steps.{step.name}.nodes={step.nodes}: 1 for a non-distributed step, else ≥ 1")
        if devices_per_node(step, cluster) < 1:
            raise LaunchError(f"launch.steps.{step.name}: devices_per_node must be at least 1")
        if step.shards is not None and step.shards < 1:
            raise LaunchError(f"launch.steps.{step.name}.shards={step.shards} must be at least 1 (or null)")
        if for_submit and cluster.max_nodes is not None and step.nodes > cluster.max_nodes:
            raise LaunchError(
                f"launch.steps.{step.name}.nodes={step.nodes} but cluster {cluster.name!r} has "
                f"cluster.max_nodes={cluster.max_nodes}"
            )
        check_layout(step, cluster)
        seen.add(step.name)
