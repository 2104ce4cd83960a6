"""SLURM launchers for nemo-steerlm: render one sbatch script per stage, submit them as an ``afterok`` chain.

Pure Python (stdlib; no torch, megatron or NeMo), so it runs on a login node. The ``launch`` recipe turns Hydra
config into the plain specs of :mod:`~nemo_steerlm.launchers.spec`; :mod:`~nemo_steerlm.launchers.layout` checks
them, :mod:`~nemo_steerlm.launchers.render` writes the scripts and :mod:`~nemo_steerlm.launchers.slurm` submits,
reports and cancels. Imports nothing else of the package. Guide: ``docs/slurm.md``.
"""

from nemo_steerlm.launchers.layout import check_chain
from nemo_steerlm.launchers.render import JobScript, render_chain
from nemo_steerlm.launchers.slurm import cancel, format_status, load_manifest, status, submit
from nemo_steerlm.launchers.spec import ChainSpec, ClusterSpec, ContainerSpec, LaunchError, StepSpec

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
