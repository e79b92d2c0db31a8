"""A seed sweep on a real single-node Slurm through submitit, with one forced requeue (`make test-slurm`).

The module starts munged, slurmctld and slurmd itself (installing Debian's packages when missing), runs
``nasrun search -m hydra/launcher=slurm seed=0,1`` at tiny size, sends job 0 the USR2 that Slurm sends
(for submitit) before a time limit, and checks that the job was requeued, resumed from its run directory, and finished
with exactly the result of an uninterrupted run. Every daemon is stopped by PID at the end.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .slurm_cluster import LocalSlurm, _alive, install_if_missing

pytestmark = pytest.mark.slurm

RUN = ["space.C=4", "space.N=1", "dataset=synthetic", "dataset.synthetic.n_train=4096", "trainer.epochs=5",
       "trainer.batch_size=16", "trainer.device=cpu", "trainer.progress=false", "benchmark=none"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = install_if_missing()
    if reason:
        if os.environ.get("NASRUN_REQUIRE_SLURM"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        pids = cluster.stop()
        left = [name for name, pid in pids.items() if _alive(pid)]
        assert not left, f"daemons still running: {left}"


def running_job(env, suffix):
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True, env=env).stdout
    return next((j for j in out.split() if j.endswith(suffix)), None)


def job_pids(job):
    """PIDs of the processes of array task ``job`` (``123_2``) on this node, found by their Slurm environment."""
    array_id, task = job.split("_")
    want = {f"SLURM_ARRAY_JOB_ID={array_id}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()}
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if want <= set(environ.read_bytes().split(b"\0")):
                pids.append(int(environ.parent.name))
    return pids


def usr2_after_first_epoch(cmd, env, tmp_path, sweep, suffix, check=None):
    """Run the sweep ``cmd``; once job 0 has finished an epoch, send its Slurm job (id ending in ``suffix``) the USR2
    that precedes a time limit, and wait for the sweep to end successfully (after the requeue)."""
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        first = sweep / "0" / "metrics.jsonl"
        while not (first.exists() and first.read_text().strip()):  # job 0 has finished its first epoch
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()
            assert time.time() < deadline, "job 0 did not finish an epoch in 300 s"
            time.sleep(0.2)
        job = running_job(env, suffix)
        assert job is not None
        if check is not None:
            check(job)
        subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)
        # Slurm holds the requeued job for cred_expire (10 s in the test cluster's slurm.conf), then starts it;
        # forcing an earlier start (StartTime=now) races the revoked credential of the killed run
        assert proc.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    return job


def history(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_seed_sweep_on_slurm_with_a_requeue(slurm, tmp_path):
    env = {**slurm.env(), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "NASRUN_BENCH": ""}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nasrun.cli", "search", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
           "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
           "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}", "seed=0,1", *RUN]
    def check_names(job):
        names = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, env=env).stdout.split()
        assert set(names) == {"nasrun-search"}, names  # jobs named after the run

    job = usr2_after_first_epoch(cmd, env, tmp_path, sweep, "_0", check_names)

    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["0", "1"]  # one run directory per job, also after the requeue
    for seed in (0, 1):
        summary = json.loads((sweep / str(seed) / "summary.json").read_text())
        assert summary["seed"] == seed and summary["epochs_run"] == 5
    assert not list(sweep.rglob("%j")) and all(p.is_file() for p in (sweep / ".submitit").iterdir())  # no %j/ folders
    env0 = json.loads((sweep / "0" / "env.json").read_text())
    assert env0["slurm_job_id"] == job and env0["command"].startswith("nasrun search seed=0")
    assert [r["slurm_job_id"] for r in env0["resumes"]] == [job]  # the requeued start, appended
    assert "epoch 5/5" in (sweep / "0" / "search.log").read_text()
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob(f"{job}*_log.*"))
    assert "USR2" in logs and "Requeued" in logs, logs  # submitit requeued the preempted job ...
    assert "resuming" in logs, logs  # ... and the requeued job resumed from the checkpoint

    ref = subprocess.run([sys.executable, "-m", "nasrun.cli", "search", "seed=0", f"hydra.run.dir={tmp_path / 'ref'}", *RUN],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    keys = ("train_loss", "valid_loss", "alpha", "alpha_raw", "genotype")
    assert [{k: r[k] for k in keys} for r in history(sweep / "0")] == [{k: r[k] for k in keys} for r in history(tmp_path / "ref")]
    got, want = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (sweep / "0", tmp_path / "ref"))
    assert_bitwise(got["method"]["alphas"], want["method"]["alphas"])  # α and every weight, bit for bit
    assert_bitwise(got["supernet"], want["supernet"])

    # the same command again: both jobs are finished, nothing is submitted, nothing is rewritten
    submitted = sorted((sweep / ".submitit").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file() and ".submitit" not in p.parts}
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    out = again.stdout + again.stderr
    assert out.count("already finished") == 2 and "submitted" not in out, out
    assert sorted((sweep / ".submitit").iterdir()) == submitted
    changed = [p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t and p.name != "multirun.yaml"]
    assert not changed, changed


def assert_bitwise(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype, k


def wait_for(what, condition, proc, log, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended while waiting for {what}:\n{log.read_text()}"
        assert time.time() < deadline, f"{what} did not happen in {timeout} s:\n{log.read_text()}"
        time.sleep(0.2)


def epochs_done(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def starts(run_dir):
    """How many times the job started (env.json: the first start and each resume)."""
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (OSError, ValueError):
        return 0
    return 1 + len(env.get("resumes", []))


def test_timeouts_past_max_num_timeout_scancel_and_a_failing_requeue_are_reported(slurm, tmp_path):
    """Issue 22 §2 on Slurm. timeout_min=5 makes every USR2 a time-out for submitit (it counts a signal as one when
    the job ran past min(0.8 timeout, timeout - 10 min)) and max_num_timeout=1 allows one requeue: job 0 is signalled
    twice (requeued, resumed, then not requeued: reported as interrupted by the time-outs, with the fix); job 1 is
    cancelled with scancel (SIGTERM: checkpointed, reported interrupted); job 2 is requeued once and its requeued run
    finds a corrupt checkpoint (reported failed with that error, not waited on). The master exits 1."""
    env = {**slurm.env(), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "NASRUN_BENCH": "", "NASRUN_POLL_S": "1"}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nasrun.cli", "search", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
           "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
           "hydra.launcher.timeout_min=5", "hydra.launcher.max_num_timeout=1", f"hydra.sweep.dir={sweep}",
           "seed=0,1,2", *RUN, "trainer.epochs=30"]
    log_path = tmp_path / "sweep.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    jobs = {}
    try:
        for i in (0, 1):
            wait_for(f"job {i}'s first epoch", lambda i=i: epochs_done(sweep / str(i)) >= 1
                     and running_job(env, f"_{i}") is not None, proc, log_path)
            jobs[i] = running_job(env, f"_{i}")
        subprocess.run(["scancel", jobs[1]], env=env, check=True)
        subprocess.run(["scancel", "--signal=USR2", jobs[0]], env=env, check=True)
        wait_for("job 2's first epoch", lambda: epochs_done(sweep / "2") >= 1 and running_job(env, "_2") is not None,
                 proc, log_path)
        jobs[2] = running_job(env, "_2")
        subprocess.run(["scancel", "--signal=USR2", jobs[2]], env=env, check=True)
        wait_for("job 2 to leave the node", lambda: running_job(env, "_2") is None and not job_pids(jobs[2]), proc,
                 log_path)
        (sweep / "2" / "checkpoint.pt").write_bytes(b"\x00 corrupted while the job was requeued")
        wait_for("job 0 to resume", lambda: starts(sweep / "0") == 2, proc, log_path)
        done = epochs_done(sweep / "0")  # an epoch after this one ends inside the resumed run's loop (signals handled)
        wait_for("job 0 to run an epoch after resuming", lambda: epochs_done(sweep / "0") > done
                 and running_job(env, "_0") is not None, proc, log_path)
        subprocess.run(["scancel", "--signal=USR2", jobs[0]], env=env, check=True)
        assert proc.wait(timeout=300) == 1, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = log_path.read_text()
    status = {i: json.loads((sweep / str(i) / "status.json").read_text()) for i in range(3)}
    assert [status[i]["status"] for i in range(3)] == ["interrupted", "interrupted", "failed"], out
    assert "timed-out too many times (hydra.launcher.max_num_timeout)" in status[0]["error"], status[0]
    assert "rerun the sweep to resume it" in status[0]["error"] and "checkpoint written" in status[0]["error"]
    assert status[1]["error"].startswith("received SIGTERM") and "checkpoint written" in status[1]["error"], status[1]
    assert "checkpoint.pt is unreadable" in status[2]["error"] and starts(sweep / "2") == 1, status[2]
    assert "0 of 3 finished" in out and "Traceback" not in out.split("jobs:")[-1], out
    for i in (0, 1):  # the interrupted jobs' last checkpoints are intact and resumable
        state = torch.load(sweep / str(i) / "checkpoint.pt", weights_only=False)
        assert not state["finished"] and state["epoch"] >= 1


def test_failed_and_lost_jobs_are_reported_and_a_bad_request_is_refused(slurm, tmp_path):
    """On Slurm without accounting (no sacct): job 1 fails (a bad split), job 2 is killed without a chance to
    write a result; the master reports both, waits on nothing, and exits 1 after job 0 finished. A request the
    partition cannot hold (a GPU on this CPU node) is refused in one line before anything is submitted."""
    env = {**slurm.env(), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "NASRUN_BENCH": "",
           "NASRUN_LOST_AFTER_S": "10", "NASRUN_POLL_S": "1"}
    base = [sys.executable, "-m", "nasrun.cli", "search", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
            "hydra.launcher.timeout_min=20", *RUN]
    bad = subprocess.run([*base, "hydra.launcher.gpus_per_node=1", f"hydra.sweep.dir={tmp_path / 'gpu'}", "seed=0"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "gpus_per_node=1 does not fit partition debug" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "gpu" / ".submitit").exists()

    sweep = tmp_path / "sweep"
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen([*base, f"hydra.sweep.dir={sweep}", "dataset.split=darts,bogus,auto",
                             "dataset.synthetic.n_train=16384"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while (job := running_job(env, "_2")) is None or not (sweep / "2" / "metrics.jsonl").exists():
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()
            assert time.time() < deadline, "job 2 did not start an epoch in 300 s"
            time.sleep(0.2)
        for pid in job_pids(job):  # SIGKILL every process of the job: no handler runs, no result file
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=600) == 1, (tmp_path / "sweep.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "sweep.log").read_text()
    status = {i: json.loads((sweep / str(i) / "status.json").read_text())["status"] for i in range(3)}
    assert status == {0: "finished", 1: "failed", 2: "failed"}, out
    assert "left the Slurm queue without a result" in out and "1 of 3 finished" in out, out


def test_one_run_over_two_slurm_tasks_equals_one_process(slurm, tmp_path):
    """Issue 24: ``hydra.launcher.tasks_per_node=2`` runs one search as 2 Slurm tasks (srun, submitit), which join a
    gloo process group at the job's first node and end where one process ends (float64, synced BatchNorm)."""
    from .test_distributed import SEARCH, assert_same_run

    env = {**slurm.env(), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "NASRUN_BENCH": ""}
    one = subprocess.run([sys.executable, "-m", "nasrun.cli", "search", *SEARCH, f"hydra.run.dir={tmp_path / 'one'}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nasrun.cli", "search", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
           "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
           "hydra.launcher.timeout_min=20", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}", "seed=0",
           *SEARCH]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads((sweep / "0" / "status.json").read_text())
    assert status["status"] == "finished", status
    assert_same_run(tmp_path / "one", sweep / "0", ("supernet", "method"), 1e-10)
    logs = [p.read_text() for p in (sweep / ".submitit").glob("*_log.err")]
    assert len(logs) == 2 and "".join(logs).count("search: space=nb201") == 1, logs  # 2 tasks; rank 0 alone reports


def test_a_two_task_job_requeued_by_usr2_resumes_every_rank(slurm, tmp_path):
    """Issue 24 §4: USR2 (Slurm's warning before a time limit) reaches both tasks; they stop at the same step, rank 0
    writes the checkpoint and submitit requeues the job; both tasks of the requeued job resume from it and the run ends
    where an uninterrupted 2-task run ends."""
    from .test_distributed import SEARCH, assert_same_run

    env = {**slurm.env(), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "NASRUN_BENCH": ""}
    args = [*SEARCH, "trainer.epochs=3", "trainer.batch_size=8", "dataset.synthetic.n_train=960"]
    base = [sys.executable, "-m", "nasrun.cli", "search", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
            "hydra.launcher.timeout_min=20", "hydra.launcher.tasks_per_node=2", "seed=0", *args]
    straight = subprocess.run([*base, f"hydra.sweep.dir={tmp_path / 'straight'}"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    sweep = tmp_path / "sweep"
    usr2_after_first_epoch([*base, f"hydra.sweep.dir={sweep}"], env, tmp_path, sweep, "")  # one job: no array index
    env_json = json.loads((sweep / "0" / "env.json").read_text())
    assert len(env_json.get("resumes", [])) == 1, env_json  # requeued once, resumed once
    assert_same_run(tmp_path / "straight" / "0", sweep / "0", ("supernet", "method"), 0.0)
