"""Checks a chain before anything is submitted: step names, inputs, node and device counts.

The model layout of each distributed step (``TP·PP`` dividing ``nodes × devices``, the batch sizes, the shape) is
checked by the ``launch`` recipe with the stages' own check, on the config each job will run with.
"""

from __future__ import annotations

import re

from nemo_steerlm.launchers.spec import ChainSpec, ClusterSpec, LaunchError, StepSpec

_STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def devices_per_node(step: StepSpec, cluster: ClusterSpec) -> int:
    """Tasks per node of ``step``: its own ``devices_per_node`` or the cluster's; 1 for a non-distributed step."""
    if not step.distributed:
        return 1
    return step.devices_per_node if step.devices_per_node is not None else cluster.devices_per_node


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
        seen.add(step.name)
