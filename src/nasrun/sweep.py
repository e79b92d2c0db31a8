"""Sweeps that survive failures (``nasrun search -m ...``, design.md §3).

Every job of a multirun records how it ended in ``status.json`` in its run directory (``finished``,
``failed`` with the one-line error, ``interrupted``) and prints one line; a failing job never stops the
others. When the launcher returns, :class:`SweepTable` (a Hydra callback) prints one row per job of the
sweep folder and makes ``nasrun`` exit 1 if any job did not finish. The submitit launchers are replaced
by subclasses (:mod:`hydra_plugins.nasrun_sweep`, built from :class:`Watching`) that check a Slurm
request against ``sinfo`` before submitting, do not resubmit finished jobs, and watch the jobs
themselves (a result file, else ``squeue``), so a job that dies without a result is reported instead of
waited on forever when ``sacct`` is unavailable.
"""

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, open_dict

from .console import console, is_main
from .errors import UserError, write_error
from .utils import write_json

STATUS = "status.json"
FAILED = []  # rows of the last sweep that did not finish; ``nasrun`` exits 1 when any


def _overrides(run_dir):
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return [str(x) for x in OmegaConf.load(path)] if path.exists() else []


def _result(summary):
    """A short result for the job line: the first benchmark test accuracy, else the test error, else the genotype."""
    if not isinstance(summary, dict):
        return ""
    for res in (summary.get("benchmark") or summary.get("results") or {}).values():
        if isinstance(res, dict) and res.get("test_acc") is not None:
            return f"test {res['test_acc']:.2f} %"
    if summary.get("test_error") is not None:
        return f"test error {summary['test_error']:.2f} %"
    return str(summary.get("genotype", ""))[:60]


def record_job(run_dir, job, status, error=None, summary=None):
    """Write ``status.json`` for one job of a sweep and print its line (rank 0 of a job of several tasks)."""
    if not is_main():
        return None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = " ".join(_overrides(run_dir))
    row = {"job": job, "status": status, "overrides": overrides, "run_dir": str(run_dir), "error": error,
           "result": _result(summary), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(run_dir / STATUS, row)
    print_row(row)
    return row


def print_row(row):
    """The one line a job's end gets (in the job's output, and in the master's for submitit launchers)."""
    ok = row["status"] == "finished"
    colour = "green" if ok else "red"
    detail = row["result"] if ok else row.get("error")
    console.print(f"[{colour}]job {row['job']} {row['status']}[/{colour}] ({row['overrides']}) → {row['run_dir']}: "
                  f"{detail}", soft_wrap=True)


def note_rerun(run_dir, status, error=None, summary=None):
    """A job of a sweep run again alone (``nasrun rerun``): its ``status.json`` follows this attempt (written by rank 0
    of several processes)."""
    path = Path(run_dir) / STATUS
    if not path.exists() or not is_main():
        return
    try:
        job = json.loads(path.read_text()).get("job")
    except (OSError, ValueError):
        job = Path(run_dir).name
    with contextlib.suppress(OSError):
        record_job(run_dir, job, status, error, summary)


class SweepStopped(BaseException):
    """Raised in a sweep's master process after its running job was interrupted, so the launcher starts no new
    job (a BaseException: Hydra reports and swallows ordinary exceptions)."""

    def __init__(self, signal, sweep_dir):
        super().__init__(signal)
        self.signal, self.sweep_dir = signal, sweep_dir


class SweepStop:
    """The sweep master's SIGINT/SIGTERM handler (basic and joblib launchers): the first signal writes
    ``<sweep>/.stop`` (every job polls it at each step: the running ones checkpoint and end ``interrupted``, no new
    one starts), a second Ctrl-C exits at once."""

    current = None  # the handler of this process's sweep, when it is the master

    def __init__(self, sweep_dir):
        self.sweep_dir, self.signal, self._old = Path(sweep_dir), None, {}

    @property
    def stop_file(self):
        return self.sweep_dir / ".stop"

    def install(self):
        import signal

        self.stop_file.unlink(missing_ok=True)  # a stop of an earlier attempt
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self.handle)
        SweepStop.current = self

    def uninstall(self):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        SweepStop.current = None

    def handle(self, signum, frame):
        import signal

        from .engine import exit_now

        name = signal.Signals(signum).name
        if self.signal is not None:
            if signum == signal.SIGINT:
                exit_now()
            return
        self.signal = name
        with contextlib.suppress(OSError):
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            self.stop_file.write_text(name)
        console.print(f"received {name}: the running job(s) checkpoint at the next step, no new job starts "
                      "(Ctrl-C again to exit at once)")


SweepStop.handle.nasrun_sweep = True  # a job's StopFlag passes its signal on here without a requeue message


def guarded_job(fn, cfg, run_dir, job):
    """Run one job of a sweep; every failure becomes a ``failed`` status instead of an exception. A stopped sweep
    (:class:`SweepStop`) starts no new job; its running job checkpoints and ends ``interrupted``."""
    from . import engine
    from .errors import Interrupted

    stop_file = Path(run_dir).parent / ".stop"
    if stop_file.exists():
        record_job(run_dir, job, "interrupted", "not started: the sweep was stopped; rerun the sweep to run it")
        return None
    engine.STOP_FILE = str(stop_file)
    try:
        summary = fn(cfg, run_dir)
    except UserError as exc:
        record_job(run_dir, job, "failed", str(exc))
        return None
    except Interrupted as exc:
        record_job(run_dir, job, "interrupted", str(exc))
        return None
    except KeyboardInterrupt:  # Ctrl-C where no handler of ours was installed (a joblib worker)
        record_job(run_dir, job, "interrupted", "Ctrl-C")
        return None
    except Exception as exc:  # noqa: BLE001 - a bug in one job must not sink the sweep
        message = write_error(exc)
        if message:  # full disk, read-only place: one line (the disk may be too full for more)
            with contextlib.suppress(OSError):
                record_job(run_dir, job, "failed", message)
            return None
        (Path(run_dir) / "error.txt").write_text(traceback.format_exc())
        record_job(run_dir, job, "failed", f"{type(exc).__name__}: {exc} (traceback in error.txt)")
        return None
    else:
        record_job(run_dir, job, "finished", summary=summary)
        return summary
    finally:
        engine.STOP_FILE = None
        console.log_path = None  # the next lines (another job's, the sweep table) are not this run's
        master = SweepStop.current
        if master is not None and master.signal is not None:  # this process is the master (basic launcher)
            raise SweepStopped(master.signal, master.sweep_dir)


def stopped_sweep(signal, sweep_dir, argv, cmd):
    """After a sweep stopped by a signal: one line with what ended how and the command that resumes; exit 3 (130 for
    Ctrl-C). Returns when the sweep was not stopped."""
    from .errors import exit_code

    master = SweepStop.current
    if signal is None and master is not None and master.signal is not None:
        signal, sweep_dir = master.signal, master.sweep_dir
    if master is not None:
        master.uninstall()
    if signal is None:
        return
    rows = sweep_rows(sweep_dir)
    done = sum(r["status"] == "finished" for r in rows)
    stopped = [str(r["job"]) for r in rows if r["status"] != "finished"]
    args = list(argv) if any(a.startswith("hydra.sweep.dir=") for a in argv) else [*argv, f"hydra.sweep.dir={sweep_dir}"]
    print(f"nasrun: sweep stopped by {signal}: {done} job(s) finished"
          + (f", not finished: {', '.join(stopped)}" if stopped else "") + ", no new job started"
          + f"; resume with: nasrun {shlex.join([cmd, *args])}", file=sys.stderr)
    sys.exit(exit_code(signal))


def sweep_rows(sweep_dir):
    """One row per job folder of a sweep (status.json, else what the folder shows), in job order."""
    rows = []
    for d in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)) if Path(sweep_dir).exists() else []:
        if not d.is_dir() or d.name.startswith(".") or not (d / ".hydra").exists():
            continue
        try:
            row = json.loads((d / STATUS).read_text())
        except (OSError, ValueError):
            done = (d / "summary.json").exists()
            row = {"job": d.name, "status": "finished" if done else "unfinished", "overrides": " ".join(_overrides(d)),
                   "run_dir": str(d), "error": None if done else "no status.json: the job did not end normally",
                   "result": ""}
        rows.append(row)
    return rows


class SweepTable(Callback):
    """Hydra callback: before a multirun, install the master's stop handler (basic and joblib launchers: their jobs
    run under this process); after it, print the job table and remember the failures (exit code 1)."""

    def on_multirun_start(self, config, **kwargs):
        target = str(config.hydra.launcher.get("_target_", ""))
        if target.endswith(("BasicLauncher", "JoblibLauncher")):
            SweepStop(config.hydra.sweep.dir).install()

    def on_multirun_end(self, config, **kwargs):
        from rich.table import Table

        rows = sweep_rows(config.hydra.sweep.dir)
        FAILED[:] = [r for r in rows if r["status"] != "finished"]
        common = set.intersection(*[set(r["overrides"].split()) for r in rows]) if len(rows) > 1 else set()
        table = Table()
        for col in ("job", "overrides", "status", "run dir", "result"):
            table.add_column(col, overflow="fold")
        for r in rows:
            ok = r["status"] == "finished"
            varying = " ".join(o for o in r["overrides"].split() if o not in common)  # what tells the jobs apart
            table.add_row(str(r["job"]), varying, r["status"] if ok else f"[red]{r['status']}[/red]",
                          r["run_dir"], r["result"] if ok else (r.get("error") or ""))
        console.print(table)
        console.print(f"sweep {config.hydra.sweep.dir}: {len(rows) - len(FAILED)} of {len(rows)} finished"
                      + (f"; not finished: {', '.join(str(r['job']) for r in FAILED)}" if FAILED else ""), soft_wrap=True)


# --- submitit launchers -----------------------------------------------------------------------------------------
def _finished(run_dir):
    """A run directory whose job already ended normally (a rerun of the sweep skips it)."""
    try:
        return json.loads((Path(run_dir) / STATUS).read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


class Watching:
    """Shared ``launch`` of the submitit launchers: skip finished jobs, submit the rest as one array, then
    report each job as it ends (poll every ``poll_s`` seconds)."""

    poll_s = float(os.environ.get("NASRUN_POLL_S", 5))
    # a Slurm job missing from squeue this long without a result is lost (a requeue keeps it in the queue)
    lost_after_s = float(os.environ.get("NASRUN_LOST_AFTER_S", 120))

    def _executor(self):
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.singleton import Singleton

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        todo, returns = [], {}
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            run_dir = self._run_dir(overrides, idx)
            if _finished(run_dir):
                console.print(f"job {idx} already finished ({' '.join(filter_overrides(overrides))}) → {run_dir}: skipped")
                returns[idx] = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)
                continue
            todo.append((idx, list(overrides), run_dir))
        if todo:
            jobs = self._executor().map_array(self, *zip(*[(o, "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                                             Singleton.get_state()) for idx, o, _ in todo]))
            console.print(f"submitted {len(jobs)} job(s) to {self._EXECUTOR}: {jobs[0].job_id.split('_')[0]}"
                          if jobs else "")
            returns.update(self._watch(jobs, todo))
        return [returns[k] for k in sorted(returns)]

    def _run_dir(self, overrides, idx):
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)

    def _watch(self, jobs, todo):
        pending = {job.job_id: (job, *item) for job, item in zip(jobs, todo)}
        returns, missing_since, said = {}, {}, None
        while pending:
            queued = self._queued()
            if queued is not None:  # a line whenever the picture changes, so a long wait is never silent
                states = {}
                for job_id in pending:
                    state = queued.get(job_id, "gone")
                    states[state] = states.get(state, 0) + 1
                line = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + f"; {len(returns)} ended"
                if line != said:
                    console.print(f"jobs: {line}" + (" (waiting for resources)" if "PENDING" in states else ""))
                    said = line
            for job_id, (job, idx, overrides, run_dir) in list(pending.items()):
                if queued is not None:
                    missing_since[job_id] = None if job_id in queued else (missing_since.get(job_id) or time.time())
                outcome = self._outcome(job, missing_since.get(job_id))
                if outcome is None:
                    continue
                del pending[job_id]
                status, error = outcome
                if status != "finished" or not (Path(run_dir) / STATUS).exists():
                    record_job(run_dir, idx, status, error)
                else:
                    print_row(json.loads((Path(run_dir) / STATUS).read_text()))
                returns[idx] = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)
            if pending:
                time.sleep(self.poll_s)
        return returns

    def _queued(self):
        """``{job id: state}`` of the queue (``squeue``), or None where nothing tells (the local executor)."""
        return None

    def _done(self, job):
        return job.done()

    def _outcome(self, job, missing_since):
        """``(status, error)`` once ``job`` has ended, else None."""
        if job.paths.result_pickle.exists() or self._done(job):
            try:
                job.results()
            except Exception as exc:  # noqa: BLE001 - a job that died before returning
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                return "failed", f"{type(exc).__name__}: {lines[-1] if lines else ''} (log: {job.paths.stderr})"
            return "finished", None
        if missing_since is not None and time.time() - missing_since > self.lost_after_s:
            return "failed", f"left the Slurm queue without a result; see {job.paths.stderr}"
        return None


class SlurmWatching(Watching):
    """The Slurm side: the request checked against ``sinfo`` first, jobs watched with ``squeue`` (no ``sacct``
    needed). The launcher classes themselves live in :mod:`hydra_plugins.nasrun_sweep` (Hydra's rule)."""

    def launch(self, job_overrides, initial_job_idx):
        try:
            check_slurm_request(self.params)
        except UserError as exc:
            print(f"nasrun: error: {exc}", file=sys.stderr)
            sys.exit(2)
        return super().launch(job_overrides, initial_job_idx)

    def _done(self, job):
        return False  # submitit asks sacct, which many sites (and test clusters) lack: the result file and squeue decide

    def _queued(self):
        if not shutil.which("squeue"):
            return None
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True)
        if out.returncode != 0:
            return None
        return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)


# --- Slurm request vs the partition ----------------------------------------------------------------------------
def _parse_minutes(text):
    """sinfo time limit (``infinite``, ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``) in minutes (None: unlimited)."""
    if text in ("infinite", "UNLIMITED", "n/a"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + h) * 60 + m + s / 60


def _gpus(gres):
    """GPUs per node from a sinfo GRES field (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres or ""))


def check_slurm_request(params, sinfo=None):
    """Raise :class:`UserError` naming the resource a job asks for that no node of its partition has.

    ``sinfo`` (for tests) is the text of ``sinfo -h -N -o '%P|%c|%m|%G|%l'``; without it the command runs
    (and the check is skipped where it is missing)."""
    if sinfo is None:
        if not shutil.which("sinfo"):
            return
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"], capture_output=True, text=True)
        if out.returncode != 0:
            return
        sinfo = out.stdout
    partition = params.get("partition")
    nodes = []
    for line in sinfo.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        name, cpus, mem, gres, limit = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        if (partition and name != partition) or (not partition and not default):
            continue
        nodes.append({"cpus": int(cpus.rstrip("+")), "mem_mb": int(mem.rstrip("+")), "gpus": _gpus(gres),
                      "limit": _parse_minutes(limit)})
    where = f"partition {partition}" if partition else "the default partition"
    if not nodes:
        raise UserError(f"Slurm has no {where}" + (f"; set hydra.launcher.partition to one of: "
                                                    f"{', '.join(sorted({ln.split('|')[0].rstrip('*') for ln in sinfo.split()}))}"
                                                    if sinfo.strip() else ""))
    asks = [("gpus_per_node", params.get("gpus_per_node"), "gpus", "GPUs"),
            ("cpus_per_task", params.get("cpus_per_task"), "cpus", "CPUs"),
            ("mem_gb", params.get("mem_gb") and params["mem_gb"] * 1024, "mem_mb", "MB of memory")]
    for key, want, field, unit in asks:
        if want and not any(n[field] >= want for n in nodes):
            most = max(n[field] for n in nodes)
            shown = params[key]
            raise UserError(f"hydra.launcher.{key}={shown} does not fit {where}: its nodes have at most {most} {unit}"
                            + ("; set hydra.launcher.gpus_per_node=null for a CPU partition" if field == "gpus" else ""))
    timeout = params.get("timeout_min")
    limits = [n["limit"] for n in nodes]
    if timeout and all(lim is not None and timeout > lim for lim in limits):
        raise UserError(f"hydra.launcher.timeout_min={timeout} exceeds the time limit of {where} "
                        f"({max(limits):.0f} min); lower it (jobs are requeued at the limit and resume)")
