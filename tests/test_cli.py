"""The ``nasrun`` command in a subprocess: help, runs, multirun, eval, and one-line errors (exit 2)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import TINY, write_nb201_fixture

ENV = {**os.environ, "NASRUN_BENCH": "", "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
NASRUN = [sys.executable, "-m", "nasrun.cli"]
ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def nasrun(*args, timeout=300, cwd=None):
    return subprocess.run(NASRUN + list(args), capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("nasrun: error") or "Error" in ln]
    assert len(errors) == 1 and errors[0] == lines[-1] and errors[0].startswith("nasrun: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_help_and_cfg(tmp_path):
    assert "nasrun search" in nasrun("--help").stdout
    proc = nasrun("search", "--help")
    listing = next(line for line in proc.stdout.splitlines() if line.startswith("method:"))
    assert proc.returncode == 0 and {"darts", "darts_2nd", "tse_darts", "sp_darts"} <= set(listing[7:].replace(",", " ").split())
    proc = nasrun("search", "--cfg", "job", "method=darts_2nd")
    assert proc.returncode == 0 and "unrolled: true" in proc.stdout


def test_search_and_eval_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = nasrun("search", *TINY, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "run directory" in proc.stdout and (out / "summary.json").exists() and (out / ".hydra").exists()
    bench = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    genotype = json.loads((out / "genotype.json").read_text())["genotype"]
    truth = write_nb201_fixture(bench, [genotype, ARCH])
    proc = nasrun("bench", "convert", str(bench), "-o", str(tmp_path / "nb201.json"))
    assert proc.returncode == 0 and "2 architectures" in proc.stdout
    proc = nasrun("eval", f"genotype={out}", f"benchmark.path={tmp_path / 'nb201.json'}",
                  f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    expected = truth[genotype]["cifar10"][0]["ori-test"]
    assert summary["results"]["cifar10"]["test_acc"] == pytest.approx(expected)
    assert f"{expected:.2f}" in proc.stdout and "ImageNet16-120" in proc.stdout


def test_eval_literal_without_benchmark_prints_params(tmp_path):
    proc = nasrun("eval", f"genotype={ARCH}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "0.802426" in proc.stdout and "no benchmark file found" in proc.stdout


def test_multirun_over_seeds(tmp_path):
    proc = nasrun("search", "-m", "seed=0,1", *TINY, "trainer.epochs=1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    seeds = [json.loads((tmp_path / str(i) / "summary.json").read_text())["seed"] for i in (0, 1)]
    assert seeds == [0, 1]


@pytest.mark.parametrize("args, needles", [
    (["search", "method=nope"], ["unknown method 'nope'", "darts, darts_2nd"]),
    (["search", "-m", "space=nb201,bogus"], ["unknown space 'bogus'"]),
    (["search", "trainer.nonsense=1"], ["trainer.nonsense"]),
    (["frobnicate"], ["unknown command"]),
    (["eval", "genotype=|conv~0|+|x|"], ["expected 3 nodes"]),
    (["eval", "genotype=|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|pool~2|"], ["unknown op 'pool'"]),
    (["eval", "genotype=Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])"],
     ["space=darts"]),
    (["eval", "genotype=/nonexistent/run_dir"], ["genotype=/nonexistent/run_dir: no such run directory or genotype file"]),
    (["eval", "genotype=DARTS_V2", "space=nb201"], ["DARTS_V2 is a DARTS-space genotype name"]),
    (["eval", "genotype=DARTS_V2", "trainer.epochs=5"], ["retrain.epochs"]),
    (["search", "-m", "--cfg", "job"], ["-m and --cfg cannot be combined"]),
])
def test_user_errors_refused_before_hydra_runs(tmp_path, monkeypatch, capsys, args, needles):
    """One line, exit 2, no traceback; checked in this process (see :func:`refused_in_process`)."""
    code, stderr = refused_in_process(monkeypatch, capsys, [*args, f"hydra.run.dir={tmp_path / 'r'}",
                                                            f"hydra.sweep.dir={tmp_path / 'm'}"])
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("nasrun: error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, needles", [
    (["search", "method=nope"], ["unknown method 'nope'", "darts, darts_2nd"]),
    (["eval", f"genotype={ARCH}", "benchmark=nb201", "benchmark.path=/nonexistent/nb201.pth"],
     ["not found", "/nonexistent/nb201.pth", "bench convert"]),
    (["search", "dataset=cifar10", "dataset.download=false", "trainer.device=cpu", "benchmark=none"],
     ["cifar10 not found", "dataset.root"]),
    (["search", *TINY, "dataset.std=[0,0,0]"], ["NaN/inf in epoch 1"]),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, needles):
    args = [a for a in args] + [f"hydra.run.dir={tmp_path / 'r'}", f"hydra.sweep.dir={tmp_path / 'm'}"]
    if "dataset=cifar10" in args:
        args.append(f"dataset.root={tmp_path / 'nodata'}")
    assert_user_error(nasrun(*args, cwd=tmp_path), *needles)


def test_corrupt_benchmark_and_changed_config(tmp_path):
    bad = tmp_path / "nb201.pth"
    bad.write_bytes(b"\x00not a pickle")
    assert_user_error(nasrun("eval", f"genotype={ARCH}", "benchmark=nb201", f"benchmark.path={bad}",
                             f"hydra.run.dir={tmp_path / 'e'}"), "corrupt", str(bad))
    run = tmp_path / "run"
    assert nasrun("search", *TINY, "trainer.epochs=1", f"hydra.run.dir={run}").returncode == 0
    assert_user_error(nasrun("search", *TINY, "trainer.epochs=1", "method.w_lr=0.5", f"hydra.run.dir={run}"),
                      "different config", "method.w_lr")


RETRAIN = ["space=darts", "genotype=DARTS_V2", "dataset=synthetic", "dataset.synthetic.image_size=32",
           "dataset.synthetic.n_train=64", "retrain.C=4", "retrain.layers=3", "retrain.epochs=12",
           "retrain.batch_size=16", "trainer.device=cpu", "trainer.progress=false"]


def _final(run, kind):
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    return ckpt["method"]["alphas"] if kind == "search" else ckpt["retrainer"]["net"]


@pytest.mark.parametrize("cmd, args", [("search", [*TINY, "trainer.epochs=12", "dataset.synthetic.n_train=256"]),
                                       pytest.param("eval", RETRAIN, marks=pytest.mark.slow)])
def test_kill_and_resume_equals_uninterrupted(tmp_path, cmd, args):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert nasrun(cmd, *args, f"hydra.run.dir={straight}").returncode == 0
    proc = subprocess.Popen(NASRUN + [cmd, *args, f"hydra.run.dir={killed}"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    epochs_done = torch.load(killed / "checkpoint.pt", weights_only=False)["epoch"]
    assert 1 <= epochs_done < 12
    resumed = nasrun(cmd, *args, f"hydra.run.dir={killed}")
    assert resumed.returncode == 0 and "resuming" in resumed.stderr
    a, b = _final(straight, cmd), _final(killed, cmd)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    assert s1["genotype"] == s2["genotype"] and s1.get("test_acc") == s2.get("test_acc")
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 12


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    args = [*TINY, "trainer.epochs=200", "dataset.synthetic.n_train=256", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(NASRUN + ["search", *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "received SIGTERM" in err and "Traceback" not in err
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert not ckpt["finished"] and ckpt["epoch"] < 200


def test_retrain_pasted_darts_genotype(tmp_path):
    from nasrun.spaces.darts_genotypes import NAMED

    proc = nasrun("eval", "space=darts", f"genotype={NAMED['PDARTS']}", "dataset=synthetic",
                  "dataset.synthetic.image_size=32", "dataset.synthetic.n_train=32", "retrain.C=4", "retrain.layers=3",
                  "retrain.epochs=1", "retrain.batch_size=16", "trainer.device=cpu", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["genotype"] == str(NAMED["PDARTS"]) and summary["protocol"] == "darts"


def test_select_command(tmp_path):
    assert nasrun("search", *TINY, f"hydra.run.dir={tmp_path / 's'}").returncode == 0
    proc = nasrun("select", f"run={tmp_path / 's'}", "selector=argmax", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'o'}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "o" / "genotype.json").read_text())["genotype"] == \
        json.loads((tmp_path / "s" / "genotype.json").read_text())["genotype"]
    assert_user_error(nasrun("select", f"run={tmp_path / 'missing'}", f"hydra.run.dir={tmp_path / 'p'}"),
                      "not a search run directory")


@pytest.mark.parametrize("launcher", ["basic", pytest.param("parallel", marks=pytest.mark.slow),
                                      pytest.param("local", marks=pytest.mark.slow)])
def test_a_failed_job_does_not_sink_the_sweep(tmp_path, launcher):
    """Job 1 fails (a bad split); job 0 and job 2 still run to their end, every job gets a line and a row in the
    final table, its status.json says how it ended, and the exit code is 1. A rerun skips what finished."""
    sweep = tmp_path / "sweep"
    args = ["search", "-m", f"hydra/launcher={launcher}", "dataset.split=darts,bogus,auto", *TINY, "trainer.epochs=1",
            f"hydra.sweep.dir={sweep}"]
    proc = nasrun(*args)
    assert proc.returncode == 1, proc.stderr
    status = {i: json.loads((sweep / str(i) / "status.json").read_text()) for i in range(3)}
    assert [status[i]["status"] for i in range(3)] == ["finished", "failed", "finished"]
    assert "dataset.split='bogus': choose auto, nb201 or darts" in status[1]["error"]
    assert all((sweep / str(i) / "summary.json").exists() for i in (0, 2))
    out = proc.stdout + proc.stderr
    assert "2 of 3 finished" in out and "dataset.split=bogus" in out and "Traceback" not in out
    if launcher != "parallel":  # joblib's workers print to their own streams
        assert out.count("job 1 failed") >= 1 and out.count("job 0 finished") >= 1
    again = nasrun(*args)
    out = again.stdout + again.stderr
    assert again.returncode == 1 and "2 of 3 finished" in out
    if launcher == "local":
        assert "job 0 already finished" in out and "job 2 already finished" in out
    else:
        assert "run already complete" in again.stdout + again.stderr


def test_slurm_request_is_checked_against_sinfo():
    from nasrun.errors import UserError
    from nasrun.sweep import check_slurm_request

    sinfo = "cpu*|16|64000|(null)|1-00:00:00\ncpu*|32|128000|(null)|1-00:00:00\ngpu|32|256000|gpu:a100:4(S:0-1)|2-00:00:00\n"
    ok = {"partition": "gpu", "gpus_per_node": 4, "cpus_per_task": 8, "mem_gb": 200, "timeout_min": 2880}
    check_slurm_request(ok, sinfo)
    check_slurm_request({"partition": None, "gpus_per_node": None, "cpus_per_task": 32, "mem_gb": 100}, sinfo)
    cases = [({"partition": None, "gpus_per_node": 1}, "gpus_per_node=1 does not fit the default partition: its nodes "
                                                       "have at most 0 GPUs; set hydra.launcher.gpus_per_node=null"),
             ({**ok, "gpus_per_node": 8}, "at most 4 GPUs"),
             ({**ok, "cpus_per_task": 64}, "cpus_per_task=64 does not fit partition gpu: its nodes have at most 32 CPUs"),
             ({**ok, "mem_gb": 512}, "mem_gb=512 does not fit partition gpu: its nodes have at most 256000 MB"),
             ({**ok, "timeout_min": 3000}, "timeout_min=3000 exceeds the time limit of partition gpu (2880 min)"),
             ({**ok, "partition": "big"}, "no partition big; set hydra.launcher.partition to one of: cpu, gpu")]
    for params, message in cases:
        with pytest.raises(UserError) as err:
            check_slurm_request(params, sinfo)
        assert message in str(err.value), str(err.value)


def test_auto_threads_follow_the_cpus_each_job_was_given(tmp_path, monkeypatch):
    """trainer.threads=auto: a joblib sweep of n_jobs=2 gives each job half the cores; Slurm's cpus_per_task caps it;
    a fixed count larger than the job's CPUs runs but warns."""
    import os

    from nasrun.utils import job_cpus

    cores = len(os.sched_getaffinity(0))
    proc = nasrun("search", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY,
                  "trainer.threads=auto", "trainer.epochs=1", f"hydra.sweep.dir={tmp_path / 'par'}")
    assert proc.returncode == 0, proc.stderr
    envs = [json.loads((tmp_path / "par" / str(i) / "env.json").read_text()) for i in (0, 1)]
    assert [(e["job_cpus"], e["torch_threads"]) for e in envs] == [(max(1, cores // 2),) * 2] * 2
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert job_cpus() == 1
    many = nasrun("search", *TINY, f"trainer.threads={cores + 3}", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'many'}")
    assert many.returncode == 0 and f"trainer.threads={cores + 3} but this job has {cores} CPU(s)" in many.stderr


def test_rerun_one_job_of_a_sweep_in_place(tmp_path):
    sweep = tmp_path / "sweep"
    proc = nasrun("search", "-m", "seed=0,1", *TINY, "trainer.epochs=1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    before = json.loads((sweep / "1" / "summary.json").read_text())
    done = nasrun("rerun", str(sweep / "1"))
    assert done.returncode == 0 and "run already complete" in done.stdout + done.stderr
    for name in ("summary.json", "checkpoint.pt", "status.json"):  # as if the job had died before its first epoch
        (sweep / "1" / name).unlink()
    again = nasrun("rerun", str(sweep / "1"))
    assert again.returncode == 0, again.stderr
    after = json.loads((sweep / "1" / "summary.json").read_text())
    assert (after["seed"], after["genotype"], after["run_dir"]) == (1, before["genotype"], before["run_dir"])
    env = json.loads((sweep / "1" / "env.json").read_text())
    assert env["command"].startswith("nasrun search seed=1") and len(env["resumes"]) == 1
    assert "epoch 1/1" in (sweep / "1" / "search.log").read_text()
    bad = nasrun("rerun", str(tmp_path))
    assert bad.returncode == 2 and "not a run directory" in bad.stderr


@pytest.mark.parametrize("args, needle", [
    (["search", "trainer.epochs=0"], "trainer.epochs=0: must be ≥ 1"),
    (["search", "trainer.epochs=-3"], "trainer.epochs=-3: must be ≥ 1"),
    (["search", "trainer.epochs=ten"], "trainer.epochs='ten': give a whole number ≥ 1"),
    (["search", "trainer.batch_size=-5"], "trainer.batch_size=-5: must be ≥ 1"),
    (["search", "trainer.batch_size=0"], "trainer.batch_size=0: must be ≥ 1"),
    (["search", "space.C=0"], "space.C=0: must be ≥ 1"),
    (["search", "dataset.train_portion=1.5"], "dataset.train_portion=1.5: give a fraction strictly between 0 and 1"),
    (["search", "+trainer.nope=1"], "unknown key trainer.nope (added with +)"),
    (["search", "+trainer.epoch=3"], "did you mean trainer.epochs"),
    (["eval"], "nasrun eval needs genotype="),
    (["search", "selector=selective_stop_darts"], "selector=selective_stop_darts: op 'sep_conv_5x5' is not in space nb201"),
    (["search", "space=darts", "selector=selective_stop"], "use selector=selective_stop_darts"),
    (["search", "space=darts", "stop=selective_stop"], "set stop.target"),
    (["search", "selector=prune_ops"], "space nb201 has none"),
    (["search", "selector=pdarts_final"], "space nb201 is not one"),
    (["search", "space=nb1shot1_s1", "selector=random_ranking"], "cannot"),
    (["search", "space=nb1shot1_s1", "selector=pt"], "selector=pt projects one op per edge"),
    (["search", "stop=darts_es"], "add diagnostics.hessian_every=2"),
    (["search", "selector=best_epoch", "selector.metric=hessian_eigenvalue"], "not logged by this search"),
    (["search", "method=gdas", "selector=pt"], "sampled single paths"),
    (["search", "method=pc_darts", "space=nb1shot1_s2"], "no such edges"),
    # issue 22 §3: these ended in tracebacks after the run directory existed
    (["search", "seed=-1"], "seed=-1: must be ≥ 0"),
    (["search", "seed=abc"], "seed='abc': give a whole number"),
    (["search", "trainer.device=gpu"], "trainer.device='gpu': choose auto, cpu, cuda, cuda:N or mps"),
    (["search", "method.w_lr=-1"], "method.w_lr=-1: must be ≥ 0"),
    (["search", "method.arch_lr=nan"], "method.arch_lr=nan: must be a finite number"),
    (["search", "space=darts", "space.layers=1"], "space.layers=1: a DARTS-family network needs at least 3 cells"),
    (["select"], "nasrun select needs run=DIR"),
    (["search", "trainer.threads=0"], "trainer.threads=0: choose auto or a whole number ≥ 1"),
    (["search", "method.w_momentum=1.5"], "method.w_momentum=1.5: must be between 0 and 1"),
    (["search", "trainer.amp=3"], "trainer.amp=3: give true or false"),
    (["eval", "genotype=DARTS_V2", "space=darts", "retrain.drop_path=2.0"], "retrain.drop_path=2.0: must be between 0 and 1"),
    (["eval", "genotype=DARTS_V2", "mode=fast"], "mode='fast': choose auto, benchmark or retrain"),
])
def test_nonsense_values_are_refused_before_a_run_directory_exists(tmp_path, monkeypatch, capsys, args, needle):
    """Issue 15 items 1, 3, 4, 8: one line, exit 2, and no run directory left behind (combinations that cannot work
    are refused before any training). In this process (`nasrun`'s own ``main``, the apps replaced by a failure: a
    value must be refused before Hydra runs); ``test_refusals_in_a_subprocess`` checks the real command."""
    run_dir = tmp_path / "run"
    code, stderr = refused_in_process(monkeypatch, capsys, [*args, f"hydra.run.dir={run_dir}"])
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasrun: error:") and needle in lines[0], stderr
    assert not run_dir.exists()


def refused_in_process(monkeypatch, capsys, args):
    """``(exit code, stderr)`` of ``nasrun ARGS`` run by :func:`nasrun.cli.main` in this process, where reaching a
    Hydra app fails the test (only what is refused before Hydra runs can be checked this way)."""
    from nasrun import cli

    def reached(*_):
        raise AssertionError(f"nasrun {' '.join(args)} was not refused before Hydra ran")

    for app in ("search_app", "eval_app", "select_app"):
        monkeypatch.setattr(cli, app, reached)
    monkeypatch.setattr(sys, "argv", ["nasrun", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["search", "seed=abc"], "seed='abc': give a whole number"),
    (["search", "space=darts", "space.layers=1"], "space.layers=1: a DARTS-family network needs at least 3 cells"),
    (["search", "+trainer.epoch=3"], "did you mean trainer.epochs"),
])
def test_refusals_in_a_subprocess(tmp_path, args, needle):
    run_dir = tmp_path / "run"
    assert_user_error(nasrun(*args, f"hydra.run.dir={run_dir}"), needle)
    assert not run_dir.exists()


def test_sweep_jobs_with_nonsense_values_fail_alone(tmp_path):
    proc = nasrun("search", "-m", "trainer.epochs=1,0", *[a for a in TINY if not a.startswith("trainer.epochs")],
                  f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1
    assert json.loads((tmp_path / "1" / "status.json").read_text())["error"] == "trainer.epochs=0: must be ≥ 1"
    assert json.loads((tmp_path / "0" / "status.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("args, needle", [  # the cases refused before Hydra are in test_user_errors_refused_before...
    (["eval", "space=darts", "genotype=DARTS_V2", "dataset=digits", "retrain.epochs=1", "retrain.C=8", "retrain.layers=3",
      "retrain.cutout=0", "trainer.device=cpu"], "set retrain.auxiliary_weight=0 for this dataset"),
    (["eval", "space=darts", "genotype=DARTS_V2", "dataset=digits", "retrain.cutout=8", "retrain.auxiliary_weight=0",
      "trainer.device=cpu"], "retrain.cutout=8 blanks whole 8×8 images"),
    (["search", *TINY, "dataset.cutout=16", "dataset.synthetic.image_size=16"], "dataset.cutout=16 blanks whole 16×16"),
    (["search", *TINY, "dataset.synthetic.n_train=24"], "trainer.batch_size=16 is larger than the search-train split "
                                                         "(12 images)"),  # issue 22 §3: it ran with no step
])
def test_messages_name_the_real_problem(tmp_path, args, needle):
    """Issue 15 item 6: each of these said something misleading (or exited 1 with a traceback)."""
    proc = nasrun(*args, cwd=tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_second_process_on_a_run_directory_is_refused(tmp_path):
    """Issue 15 item 5: two processes on one run directory used to interleave metrics.jsonl. The second is refused
    (who holds it, exit 2) and, once the first has stopped, the same command resumes."""
    import os
    import signal
    import time

    run = tmp_path / "run"
    args = ["search", *TINY, "trainer.epochs=30", "dataset.synthetic.n_train=64", f"hydra.run.dir={run}"]
    first = subprocess.Popen(NASRUN + args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ((run / ".lock").exists() and f"PID {first.pid}" in (run / ".lock").read_text()):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # paused, still holding the lock, however slow the second start is
        second = nasrun(*args)
        assert second.returncode == 2 and f"is in use by PID {first.pid}" in second.stderr, second.stderr
        os.kill(first.pid, signal.SIGCONT)
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):  # training, under
            assert first.poll() is None and time.time() < deadline, first.communicate()  # its signal handler
            time.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 3
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
    lines = len((run / "metrics.jsonl").read_text().splitlines())
    third = nasrun(*args, timeout=600)
    assert third.returncode == 0 and "resuming" in third.stderr + third.stdout, third.stderr
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(30)) and lines < 30


@pytest.mark.parametrize("args, needle", [
    (["search", "hydra.run.dir=/sys/nasrun-test/run"], "cannot write the output directory /sys/nasrun-test/run"),
    (["search", "-m", "seed=1,2", "hydra.sweep.dir=/sys/nasrun-test/sweep"], "hydra.sweep.dir=..."),
])
def test_an_output_place_that_cannot_be_written_is_one_line(tmp_path, args, needle):
    """Issue 15 item 4: a read-only output place (sysfs refuses even root) is refused before Hydra creates it."""
    proc = nasrun(*args, cwd=tmp_path)
    assert_user_error(proc, needle)


def test_a_full_disk_never_truncates_the_checkpoint(tmp_path):
    """Issue 15 item 4: the disk fills up while epoch 2's checkpoint is written (torch.save fails with ENOSPC after
    writing part of it): one line, exit 2, epoch 1's checkpoint intact and no temp file left; the same command then
    resumes from epoch 1 and finishes."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, torch\n"
        "_save, _calls = torch.save, [0]\n"
        "def save(obj, f, *a, **k):\n"
        "    _calls[0] += 1\n"
        "    if _calls[0] == 2 and hasattr(f, 'write'):\n"
        "        f.write(b'partial checkpoint bytes')\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return _save(obj, f, *a, **k)\n"
        "torch.save = save\n")
    run = tmp_path / "run"
    args = ["search", *TINY, "trainer.epochs=3", f"hydra.run.dir={run}"]
    full = subprocess.run(NASRUN + args, capture_output=True, text=True, timeout=300,
                          env={**ENV, "PYTHONPATH": f"{hook}{os.pathsep}{ENV.get('PYTHONPATH', '')}"})
    assert_user_error(full, "the disk is full", "rerun the same command to resume")
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and not list(run.glob(".checkpoint.pt.*"))
    again = nasrun(*args)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout + again.stderr and torch.load(run / "checkpoint.pt", weights_only=False)["finished"]


def test_a_run_directory_belongs_to_the_command_that_made_it(tmp_path):
    """Issue 22 §1: a refused command writes nothing into the run it was pointed at (Hydra's .hydra/ included), so
    `nasrun rerun` still reads the run's own overrides; select and eval never write into a search run; the same
    command with the same config goes on (here: it is complete)."""
    run = tmp_path / "run"
    first = nasrun("search", *TINY, "trainer.epochs=1", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr
    files = [".hydra/overrides.yaml", ".hydra/config.yaml", "config.yaml", "summary.json", "genotype.json"]
    before = {f: (run / f).read_bytes() for f in files}
    assert_user_error(nasrun("search", *TINY, "trainer.epochs=1", "seed=3", f"hydra.run.dir={run}"),
                      "holds a run with a different config (seed: 0 -> 3)")
    assert_user_error(nasrun("select", f"run={run}", "selector=argmax", f"hydra.run.dir={run}"),
                      "holds a nasrun search run; nasrun select never writes into another command's run")
    assert_user_error(nasrun("eval", f"genotype={ARCH}", "benchmark=none", f"hydra.run.dir={run}"),
                      "holds a nasrun search run")
    assert {f: (run / f).read_bytes() for f in files} == before
    again = nasrun("rerun", str(run))
    assert again.returncode == 0 and "run already complete" in again.stdout + again.stderr, again.stderr
    same = nasrun("search", *TINY, "trainer.epochs=1", "trainer.progress=true", f"hydra.run.dir={run}")
    assert same.returncode == 0 and "run already complete" in same.stdout + same.stderr  # progress: resume-free


def test_a_sweep_is_never_rewritten_by_another_and_status_follows_the_last_attempt(tmp_path):
    """Issue 22 §1: re-running a sweep into its folder with one override changed is refused before anything is
    written (finished jobs stay finished); a job run again alone (`nasrun rerun`) updates its status.json; a
    temporary file left by a write killed before its rename is removed at the next start."""
    sweep = tmp_path / "sweep"
    args = ["search", "-m", "seed=0,1", *TINY, "trainer.epochs=1", f"hydra.sweep.dir={sweep}"]
    assert nasrun(*args).returncode == 0
    overrides = (sweep / "0" / ".hydra" / "overrides.yaml").read_bytes()
    assert_user_error(nasrun(*args, "method.w_lr=0.1"), "holds a sweep with other overrides",
                      "rerun it with the same overrides")
    assert [json.loads((sweep / str(i) / "status.json").read_text())["status"] for i in (0, 1)] == ["finished"] * 2
    assert (sweep / "0" / ".hydra" / "overrides.yaml").read_bytes() == overrides
    job = sweep / "1"
    for name in ("summary.json", "checkpoint.pt"):
        (job / name).unlink()
    status = json.loads((job / "status.json").read_text())
    (job / "status.json").write_text(json.dumps({**status, "status": "failed", "error": "killed"}))
    (job / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    rerun = nasrun("rerun", str(job))
    assert rerun.returncode == 0, rerun.stderr
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "finished" and status["error"] is None and status["job"] == 1
    assert not list(job.glob(".*.tmp"))
    assert nasrun(*args).returncode == 0  # the same sweep again: every job complete


def _start(args, ready, timeout=120):
    """Start ``nasrun *args`` and wait until the file ``ready`` exists (a first checkpoint)."""
    proc = subprocess.Popen(NASRUN + list(args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), proc.communicate()[1]
    return proc


def test_ctrl_c_checkpoints_and_names_the_command_that_resumes(tmp_path):
    """Issue 22 §2: Ctrl-C (SIGINT) in a single run checkpoints at the next step and exits 130 with one line naming
    `nasrun rerun RUN`, which resumes it to the end."""
    run = tmp_path / "run"
    proc = _start(["search", *TINY, "trainer.epochs=200", "dataset.synthetic.n_train=256", f"hydra.run.dir={run}"],
                  run / "checkpoint.pt")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("nasrun: received SIGINT; checkpoint written") and f"resume with: nasrun rerun {run}" in last
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert not ckpt["finished"] and ckpt["epoch"] < 200


def test_a_second_ctrl_c_exits_at_once():
    """The first Ctrl-C asks for a checkpoint at the next step; a second one, before it, leaves at once (130)."""
    code = ("import os, signal, time\nfrom nasrun.engine import StopFlag\nwith StopFlag() as stop:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(0.2)\n    assert stop.signal == 'SIGINT'\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)\nprint('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 130 and "not reached" not in proc.stdout
    assert proc.stderr.strip().splitlines() == ["nasrun: second Ctrl-C: exiting now; the last checkpoint is intact "
                                                "(rerun to resume from it)"]


@pytest.mark.slow  # make test has the single-run SIGTERM and Ctrl-C tests
@pytest.mark.parametrize("launcher, sig", [("basic", signal.SIGINT),
                                           pytest.param("parallel", signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_signal_to_the_sweep_master_stops_the_sweep(tmp_path, launcher, sig):
    """Issue 22 §2: SIGINT/SIGTERM to a sweep's master checkpoints the running job(s) at the next step, marks them
    interrupted, starts no new job and exits 130/3 with one line naming the command that resumes; that command
    resumes the interrupted jobs and runs the rest."""
    sweep = tmp_path / "sweep"
    args = ["search", "-m", f"hydra/launcher={launcher}", "seed=0,1,2", *TINY, "trainer.epochs=40",
            "dataset.synthetic.n_train=256", f"hydra.sweep.dir={sweep}"]
    if launcher == "parallel":
        args.insert(3, "hydra.launcher.n_jobs=2")
    proc = _start(args, sweep / "0" / "checkpoint.pt")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else 3), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"nasrun: sweep stopped by {signal.Signals(sig).name}") and "no new job started" in last
    resume = last.split("resume with: nasrun ", 1)[1].split()
    status = json.loads((sweep / "0" / "status.json").read_text())
    assert status["status"] == "interrupted" and "checkpoint written" in status["error"]
    if launcher == "basic":
        assert not (sweep / "1").exists() and not (sweep / "2").exists()  # no new job started
    else:
        assert json.loads((sweep / "2" / "status.json").read_text())["status"] == "interrupted"
    assert not torch.load(sweep / "0" / "checkpoint.pt", weights_only=False)["finished"]
    again = nasrun(*resume, timeout=600)
    assert again.returncode == 0, again.stderr
    assert [json.loads((sweep / str(i) / "status.json").read_text())["status"] for i in range(3)] == ["finished"] * 3
    assert "resuming" in (sweep / "0" / "search.log").read_text()


def test_paths_are_quoted_and_expanded_for_hydras_parser(monkeypatch, tmp_path):
    """Issue 22 §4, in this process: every path key's value survives Hydra's override parser unchanged (spaces,
    non-ASCII letters, quotes, backslashes), ``~`` and ``$VARS`` are expanded, genotypes are quoted, sweeps stay
    sweeps. The whole commands run in ``test_paths_with_spaces_non_ascii_letters_and_tilde`` (make test-slow)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nasrun.cli import quote_args

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WORK", "/scratch/me")
    parse = OverridesParser.create().parse_overrides
    odd = "/data/a b ü/it's \\ here"
    cases = {f"hydra.run.dir={odd}": odd, "benchmark.path=~/nb201.json": f"{tmp_path}/nb201.json",
             "dataset.root=$WORK/cifar": "/scratch/me/cifar", "run=outputs/x": "outputs/x",
             f"genotype={ARCH}": ARCH, "benchmark.path='~/quoted'": "~/quoted",
             **{f"dataset.root={v}": v for v in ("/a\\b", "/ends/in\\", "/x\\'y", "/two\\\\'", "/q''")}}
    for arg, want in cases.items():
        (override,) = parse(quote_args([arg]))
        assert override.value() == want, (arg, override.value())
    (sweep,) = parse(quote_args(["seed=0,1"]))
    assert sweep.is_sweep_override()


@pytest.mark.slow
def test_paths_with_spaces_non_ascii_letters_and_tilde(tmp_path):
    """Issue 22 §4: nasrun rerun on a folder whose path has a space and a non-ASCII letter; an unquoted non-ASCII
    hydra.run.dir; ``benchmark.path=~/...`` reaching nasrun unexpanded (zsh, quotes) and the README's benchmark lines
    run as written in bash, from a home with the files they name."""
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    env = {**ENV, "HOME": str(home)}
    sweep = tmp_path / "a b ü" / "s"
    proc = nasrun("search", "-m", "seed=0", *TINY, "trainer.epochs=1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    again = nasrun("rerun", str(sweep / "0"))
    assert again.returncode == 0 and "run already complete" in again.stdout + again.stderr, again.stderr
    plain = nasrun("search", *TINY, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'ü'}")
    assert plain.returncode == 0 and (tmp_path / "ü" / "summary.json").exists(), plain.stderr
    run = home / "work" / "outputs" / "search" / "2026-11-22_19-00-00"
    assert nasrun("search", *TINY, "trainer.epochs=1", f"hydra.run.dir={run}").returncode == 0
    genotype = json.loads((run / "genotype.json").read_text())["genotype"]
    write_nb201_fixture(home / "work" / "NAS-Bench-201-v1_1-096897.pth", [genotype, ARCH])
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    prefixes = ("nasrun bench convert NAS-Bench-201-v1_1-096897.pth -o ~/",
                "nasrun eval genotype=outputs/search/2026-11-22_19-00-00/genotype.json benchmark.path=~/")
    lines = [next(ln for ln in readme if ln.startswith(prefix)).split("  #")[0].strip() for prefix in prefixes]
    for line in lines:  # as written, in bash (which expands ~ after = in this position)
        done = subprocess.run(["bash", "-c", line.replace("nasrun ", f"{sys.executable} -m nasrun.cli ", 1)],
                              capture_output=True, text=True, env=env, cwd=home / "work", timeout=300)
        assert done.returncode == 0, (line, done.stderr)
    literal = subprocess.run([*NASRUN, "eval", f"genotype={run / 'genotype.json'}", "benchmark.path=~/nb201.json",
                              f"hydra.run.dir={tmp_path / 'eval'}"], capture_output=True, text=True, env=env, timeout=300)
    assert literal.returncode == 0, literal.stderr
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["results"]["cifar10"]["test_acc"] is not None


def test_a_sweep_takes_plain_overrides_of_keys_only_its_presets_have(tmp_path):
    """``selector.proj_intv=1`` beside a sweep over presets that bring selector=pt: Hydra's first compose (without
    the sweep) has no such key and would stop; nasrun passes it as ``++`` and every job gets it. A sweep with a job
    whose config lacks the key is refused in one line."""
    proc = nasrun("search", "-m", "+experiment=darts_pt_nb201,fixed_alpha_pt_nb201", "selector.proj_intv=1",
                  "selector.max_valid_batches=1", *TINY, "trainer.epochs=1", f"hydra.sweep.dir={tmp_path / 's'}")
    assert proc.returncode == 0, proc.stderr
    for job in (0, 1):
        assert "proj_intv: 1" in (tmp_path / "s" / str(job) / "config.yaml").read_text()
    proc = nasrun("search", "-m", "selector=pt,random_ranking", "selector.proj_intv=1", *TINY,
                  f"hydra.sweep.dir={tmp_path / 't'}")
    assert_user_error(proc, "selector.proj_intv=1: the sweep's job selector=random_ranking has no key selector.proj_intv")
