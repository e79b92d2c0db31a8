"""MLflow: a local SQLite store by default (``./mlflow.db``, artefacts in ``./mlartifacts``), or any tracking server."""

import time
from pathlib import Path

from . import require

MAX_PARAM = 6000  # MLflow's limit on a parameter value's length


class MlflowLogger:
    """The config as parameters, every epoch number as a metric at step = epoch, α heat maps as images per step,
    the genotype as text per epoch (``genotypes/epoch_NNN.txt``) and as the tag ``genotype``, the run's files as
    artefacts. A sweep is one experiment (its directory), each job a run named by its overrides.

    Args:
        name: the tracker's name in trackers.json.
        tracking_uri: the store (null: ``sqlite:///<working directory>/mlflow.db``; a server: ``http://host:5000``).
        experiment: experiment name (null: the sweep directory, or ``nasrun-<command>`` for a single run).
        artifact_location: where a new experiment keeps its artefacts (null: ``./mlartifacts`` beside a local
            store, the server's default otherwise).
    """

    def __init__(self, name="mlflow", tracking_uri=None, experiment=None, artifact_location=None):
        self.name, self.tracking_uri, self.experiment = name, tracking_uri, experiment
        self.artifact_location = artifact_location
        self.mlflow = require("mlflow", "mlflow")
        if not self.tracking_uri or str(self.tracking_uri).startswith("sqlite"):
            require("sqlalchemy", "mlflow")
            require("alembic", "mlflow")
        self.client, self.run_id = None, None

    def open(self, run_dir, info, state, logged):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = state.get("tracking_uri") or self.tracking_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = state.get("run_id")
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
            steps = [m.step for m in self.client.get_metric_history(self.run_id, "train_loss")]
            # a kill between sending an epoch and noting it in trackers.json: the store has it already
            return {"tracking_uri": uri, "run_id": self.run_id, "logged": max(steps, default=-1) + 1}
        name = self.experiment or info.group
        exp = self.client.get_experiment_by_name(name)
        location = self.artifact_location or (str(Path.cwd() / "mlartifacts") if uri.startswith("sqlite") else None)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=location)
        run = self.client.create_run(exp_id, run_name=info.name, tags={"nasrun.run_dir": str(Path(run_dir).resolve())})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in info.config.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return {"tracking_uri": uri, "run_id": self.run_id}

    def log(self, epoch, scalars, images, histograms, genotype):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("/", "."), v, now, epoch) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        for key, image in images.items():
            self.client.log_image(self.run_id, image, key=f"alpha_{key}", step=epoch)
        if genotype:
            self.client.log_text(self.run_id, genotype, f"genotypes/epoch_{epoch:03d}.txt")
            self.client.set_tag(self.run_id, "genotype", genotype[:MAX_PARAM])

    def artefacts(self, paths):
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, finished):
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")
        self.client = None
