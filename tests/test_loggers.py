"""Live trackers (issue 25): each tracker's own reader finds what a tiny search wrote, exactly once after a resume."""

import json
import os
import signal
from pathlib import Path

import pytest

from nasrun.errors import Interrupted, UserError
from nasrun.search import run_search

from .conftest import make_cfg


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def numbers(record):
    """The top-level numbers of a metrics record and its benchmark result (what every tracker must carry)."""
    out = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
    out.update({f"benchmark/{k}": v for k, v in (record.get("benchmark") or {}).items() if isinstance(v, (int, float))})
    return out


def tensorboard_events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {p.parent for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_tensorboard_holds_every_number_image_and_genotype(tmp_path):
    """TensorBoard's event reader finds every number of metrics.jsonl at its epoch, the α heat map and histogram of
    each epoch, the genotype text per epoch and the run's artefacts."""
    run = tmp_path / "run"
    summary = run_search(make_cfg(["logger=tensorboard", "trainer.epochs=2"]), run)
    acc = tensorboard_events(run)
    scalars = set(acc.Tags()["scalars"])
    recs = records(run)
    expected = numbers(recs[0])
    assert {"train_loss", "valid_acc", "w_lr", "skip_count"} <= set(expected) <= scalars
    for key in expected:
        events = acc.Scalars(key)
        assert [e.step for e in events] == [0, 1], key
        assert [e.value for e in events] == pytest.approx([r[key] for r in recs], rel=1e-6, abs=1e-6), key
    images = acc.Images("alpha/normal")
    assert [e.step for e in images] == [0, 1] and all(e.width > 50 and e.height > 50 for e in images)
    assert [e.step for e in acc.Histograms("alpha/normal")] == [0, 1]
    texts = acc.Tensors("genotype/text_summary")
    assert [e.step for e in texts] == [0, 1]
    assert recs[1]["genotype"] in texts[1].tensor_proto.string_val[0].decode()
    assert summary["genotype"] in acc.Tensors("artefacts/genotype.json/text_summary")[0].tensor_proto.string_val[0].decode()
    assert acc.Images("report/curves")


def test_mlflow_run_has_the_config_metrics_images_and_artefacts(tmp_path):
    """MLflow's client finds the run in a local SQLite store: the flattened config as parameters, each number's
    history by epoch, the α images, the genotype tag and text, and genotype.json, summary.json and the plot."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    summary = run_search(make_cfg(["logger=mlflow", "trainer.epochs=2", f"logger.mlflow.tracking_uri={uri}",
                                   f"logger.mlflow.artifact_location={tmp_path / 'artefacts'}"]), run)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("nasrun-search")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_id == json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"]
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    params = found.data.params
    assert params["method.name"] == "darts" and params["trainer.epochs"] == "2" and params["seed"] == "0"
    recs = records(run)
    for key in numbers(recs[0]):
        history = client.get_metric_history(found.info.run_id, key.replace("/", "."))
        assert [m.step for m in history] == [0, 1], key
        assert [m.value for m in history] == pytest.approx([r[key] for r in recs]), key
    assert found.data.tags["genotype"] == summary["genotype"]
    paths = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"genotype.json", "summary.json", "curves.png", "genotypes"} <= paths
    texts = {a.path for a in client.list_artifacts(found.info.run_id, "genotypes")}
    assert texts == {"genotypes/epoch_000.txt", "genotypes/epoch_001.txt"}
    assert any(p.startswith("images") for p in paths)  # log_image's per-step α heat maps


def wandb_records(path):
    """The records of a W&B ``.wandb`` file: a ``:W&B`` header, then the LevelDB log format (32 KiB blocks of
    chunks, each a 7-byte header: CRC, little-endian length, type full/first/middle/last), each record a protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, parts = 7, 32768, [], b""
    while pos + 7 <= len(data):
        room = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if room < 7 or kind == 0:  # block trailer or padding
            pos += room
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        else:
            chunks.append(parts + chunk)
    out = []
    for raw in chunks:
        record = pb.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def test_wandb_offline_run_holds_the_history(tmp_path):
    """W&B offline: the run's .wandb file (read with its record format above) holds one history row per epoch with
    every number of metrics.jsonl, the α images and the genotype; the config; the saved artefacts."""
    run = tmp_path / "run"
    run_search(make_cfg(["logger=wandb", "trainer.epochs=2"]), run)
    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    recs = wandb_records(path)
    rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in recs if r.WhichOneof("record_type") == "history"]
    assert [row["_step"] for row in rows] == [0, 1]
    metrics = records(run)
    for key in numbers(metrics[0]):
        assert [row[key] for row in rows] == pytest.approx([m[key] for m in metrics]), key
    assert [row["genotype"] for row in rows] == [m["genotype"] for m in metrics]
    assert all(any(k.startswith("alpha/normal") for k in row) for row in rows)
    (run_record,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run_record.config.update}
    assert config["method"]["name"] == "darts" and run_record.run_id == path.stem.removeprefix("run-")
    saved = {f.path for r in recs if r.WhichOneof("record_type") == "files" for f in r.files.files}
    assert {"genotype.json", "summary.json", "curves.png"} <= saved


def test_a_resumed_run_sends_each_epoch_once(tmp_path, monkeypatch):
    """Killed in epoch 2 (SIGUSR1 after epoch 1 was sent) and resumed: TensorBoard and MLflow hold epochs 0-2 once
    each, in the same tracker runs; W&B's two offline files (before and after the resume) of the same run id hold
    them once between them. A kill between the checkpoint and the send (trackers.json one epoch behind for
    TensorBoard and MLflow) is caught up on resume without a duplicate."""
    import nasrun.engine as engine
    from mlflow.tracking import MlflowClient

    from nasrun.loggers import Trackers

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg(["logger=[tensorboard,mlflow,wandb]", "trainer.epochs=3", f"logger.mlflow.tracking_uri={uri}",
                    f"logger.mlflow.artifact_location={tmp_path / 'artefacts'}"])
    run = tmp_path / "run"
    armed, original_log, original_acc = {"on": False}, Trackers.log, engine.accumulate

    def log(self, record):
        original_log(self, record)
        armed["on"] = record["epoch"] == 0

    def accumulate(*args):
        original_acc(*args)
        if armed["on"]:
            armed["on"] = False
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(Trackers, "log", log)
    monkeypatch.setattr(engine, "accumulate", accumulate)
    with pytest.raises(Interrupted):
        run_search(cfg, run)
    import gc

    gc.collect()  # the interrupted run's frames (and its run-directory lock) sit in a reference cycle
    monkeypatch.setattr(Trackers, "log", original_log)
    state = json.loads((run / "trackers.json").read_text())
    assert state["tensorboard"]["logged"] == state["mlflow"]["logged"] == 1
    for name in ("tensorboard", "mlflow"):  # as if killed after the checkpoint of epoch 1, before its send was noted
        state[name]["logged"] = 0
    (run / "trackers.json").write_text(json.dumps(state))
    run_search(cfg, run)
    acc = tensorboard_events(run)
    recs = records(run)
    assert [e.step for e in acc.Scalars("train_loss")] == [0, 1, 2]
    assert [e.value for e in acc.Scalars("train_loss")] == pytest.approx([r["train_loss"] for r in recs], rel=1e-6)
    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("nasrun-search").experiment_id])
    assert found.info.run_id == state["mlflow"]["run_id"] and found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx([r["train_loss"] for r in recs])
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and {f.stem for f in files} == {f"run-{state['wandb']['run_id']}"}
    steps = [json.loads(i.value_json) for f in files for r in wandb_records(f) if r.WhichOneof("record_type") == "history"
             for i in r.history.item if (i.key or "/".join(i.nested_key)) == "_step"]
    assert steps == [0, 1, 2]


def test_a_missing_tracker_package_is_refused_before_the_run(tmp_path, monkeypatch):
    """A tracker whose package does not import is one line naming what to install, and no run directory is made."""
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(UserError, match=r"logger=wandb needs the wandb package: pip install 'nasrun\[wandb\]'"):
        run_search(make_cfg(["logger=wandb"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_several_trackers_compose_and_a_resume_may_add_one(tmp_path):
    """``logger=[tensorboard,mlflow]`` composes both under ``logger``; the logger group is not part of what a resume
    compares, so a finished run can be reopened with another tracker."""
    cfg = make_cfg(["logger=[tensorboard,mlflow]"])
    assert set(cfg.logger) == {"tensorboard", "mlflow"}
    run_search(make_cfg(["trainer.epochs=1"]), tmp_path / "run")
    run_search(make_cfg(["trainer.epochs=1", "logger=tensorboard"]), tmp_path / "run")  # no config-diff refusal


def test_retraining_and_benchmark_evals_reach_the_trackers(tmp_path):
    """``nasrun eval``: a retraining sends its epochs (lr, train and test numbers) and summary.json; a benchmark
    query sends its table as one step."""
    from nasrun.evaluate import run_eval

    retrain = ["space=darts", "genotype=DARTS_V2", "dataset=synthetic", "dataset.synthetic.image_size=32",
               "dataset.synthetic.n_train=48", "retrain.C=4", "retrain.layers=3", "retrain.epochs=2",
               "retrain.batch_size=16", "trainer.device=cpu", "trainer.progress=false", "logger=tensorboard"]
    run = tmp_path / "retrain"
    run_eval(make_cfg(retrain, config_name="eval", tiny=False), run)
    acc = tensorboard_events(run)
    recs = records(run)
    for key in ("test_acc", "train_loss", "lr"):
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(key)] == [(r["epoch"], r[key]) for r in recs]
    assert acc.Tensors("artefacts/summary.json/text_summary")
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    run = tmp_path / "bench"
    run_eval(make_cfg(["space=nb201", f"genotype='{arch}'", "benchmark=none", "logger=tensorboard"],
                      config_name="eval", tiny=False), run)
    acc = tensorboard_events(run)
    (text,) = acc.Tensors("genotype/text_summary")
    assert text.step == 0 and arch in text.tensor_proto.string_val[0].decode()
    assert "cifar10/params_m" in acc.Tags()["scalars"]


def test_a_sweep_is_one_group_its_jobs_named_by_their_overrides(tmp_path):
    """``nasrun search -m seed=0,1 logger=[mlflow,tensorboard]``: one MLflow experiment named by the sweep directory
    holding a run per job, named by that job's overrides; TensorBoard folders named the same under each job."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from .conftest import TINY

    sweep, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "nasrun.cli", "search", "-m", "seed=0,1", *TINY, "trainer.epochs=1",
                           "logger=[mlflow,tensorboard]", f"logger.mlflow.tracking_uri={uri}",
                           f"logger.mlflow.artifact_location={tmp_path / 'artefacts'}", f"hydra.sweep.dir={sweep}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(str(sweep))
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["seed=0", "seed=1"]
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}
    for job, seed in ((0, 0), (1, 1)):
        assert (sweep / str(job) / "tensorboard" / f"seed={seed}").is_dir()
    from nasrun.loggers import safe_name

    long = [safe_name("a=" + "x" * 300 + str(i)) for i in (1, 2)]
    assert all(len(n) == 100 for n in long) and long[0] != long[1] and safe_name("a/b") == "a_b"


def test_darts_pt_phases_reach_the_trackers(tmp_path):
    """DARTS-PT's projections after the search: each tuning epoch's projected genotype, its count and the projected
    mixing weights go to the trackers at steps after the search's epochs."""
    run = tmp_path / "run"
    summary = run_search(make_cfg(["selector=pt", "selector.proj_intv=1", "trainer.epochs=2", "logger=tensorboard"]),
                         run)
    acc = tensorboard_events(run)
    steps = [e.step for e in acc.Scalars("pt_projections")]
    assert steps and steps[0] >= 2 and steps == sorted(set(steps))
    assert acc.Scalars("pt_projections")[-1].value == 6  # NB201: one projection per edge
    texts = acc.Tensors("genotype/text_summary")
    assert [t.step for t in texts][:2] == [0, 1] and summary["genotype"] in texts[-1].tensor_proto.string_val[0].decode()
    assert [e.step for e in acc.Images("alpha/normal")][-len(steps):] == steps
