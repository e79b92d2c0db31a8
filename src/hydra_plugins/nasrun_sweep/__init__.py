"""nasrun's submitit launchers (Hydra finds launcher plugins only under ``hydra_plugins``): submitit's local
and Slurm launchers with :mod:`nasrun.sweep`'s failure handling, finished-job skipping and job watching."""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from nasrun.sweep import SlurmWatching, Watching


class LocalLauncher(Watching, submitit_launcher.LocalLauncher):
    """``hydra/launcher=local``: one local process per job."""


class SlurmLauncher(SlurmWatching, submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: one Slurm array task per job."""
