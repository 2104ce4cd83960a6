"""SLURM launchers for nemo-steerlm: render one sbatch script per stage, submit them as an ``afterok`` chain.

Pure Python (stdlib; no torch, megatron or NeMo), so it runs on a login node. The ``launch`` recipe turns Hydra
config into the plain specs of :mod:`launchers.spec`; :mod:`launchers.layout` checks them, :mod:`launchers.render`
writes the scripts and :mod:`launchers.slurm` submits, reports and cancels. Guide: ``docs/slurm.md``.
"""

from launchers.layout import check_chain
from launchers.render import JobScript, render_chain
from launchers.slurm import cancel, format_status, load_manifest, status, submit
from launchers.spec import ChainSpec, ClusterSpec, ContainerSpec, LaunchError, StepSpec

__all__ = [
    "ChainSpec",
    "ClusterSpec",
    "ContainerSpec",
    "JobScript",
    "LaunchError",
    "StepSpec",
    "cancel",
    "check_chain",
    "format_status",
    "load_manifest",
    "render_chain",
    "status",
    "submit",
]
