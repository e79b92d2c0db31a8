"""Weights & Biases: offline by default (``<run>/wandb/``; ``wandb sync`` uploads it later)."""

import uuid
from pathlib import Path

from . import require


class WandbLogger:
    """The config, every epoch number at step = epoch, α heat maps and histograms, the genotype as text, the run's
    files saved with it. A sweep is a W&B group (its directory), each job a run named by its overrides; a resumed
    run continues the same run id.

    Args:
        name: the tracker's name in trackers.json.
        project, entity: where the run goes (entity null: the user's default).
        mode: ``offline`` (files only), ``online`` or ``disabled``.
        group: the run's group (null: the sweep directory, or ``nasrun-<command>``).
        tags: tags for the run.
    """

    def __init__(self, name="wandb", project="nasrun", entity=None, mode="offline", group=None, tags=None):
        self.name, self.project, self.entity, self.mode = name, project, entity, mode
        self.group, self.tags = group, list(tags or [])
        self.wandb = require("wandb", "wandb")
        self.run, self.run_dir = None, None

    def open(self, run_dir, info, state, logged):
        self.run_dir = Path(run_dir)
        run_id = state.get("run_id") or uuid.uuid4().hex[:12]
        self.run = self.wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(self.run_dir),
                                   id=run_id, resume="allow", name=info.name, group=self.group or info.group,
                                   tags=self.tags, config=info.nested, settings=self.wandb.Settings(silent=True))
        return {"run_id": run_id}

    def log(self, epoch, scalars, images, histograms, genotype):
        row = dict(scalars)
        row.update({f"alpha/{k}": self.wandb.Image(v) for k, v in images.items()})
        row.update({f"alpha_hist/{k}": self.wandb.Histogram(v.ravel()) for k, v in histograms.items()})
        if genotype:
            row["genotype"] = genotype
        self.run.log(row, step=epoch)

    def artefacts(self, paths):
        for path in paths:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, finished):
        if self.run is not None:
            self.run.finish(exit_code=0 if finished else 1)
            self.run = None
