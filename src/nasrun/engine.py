"""The resumable epoch loop shared by search and retraining.

Per epoch: ``epoch_start(epoch)``, then ``step(batch)`` for every batch of the stream (accumulating
device-side sums, no host sync), then ``epoch_end(epoch, means, seconds) -> record``; the record is
appended to metrics.jsonl and a checkpoint is written atomically. SIGTERM/SIGUSR1 checkpoint at the
next step boundary and raise :class:`Interrupted`; a NaN/inf loss stops with the last good checkpoint.
"""

import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .console import console
from .distributed import WORLD, agree, barrier, reduce_sums, shared
from .errors import Interrupted, UserError
from .files import read_checkpoint


LOOP_STATE = ("rng", "epoch", "step", "history", "elapsed", "sums")  # what every checkpoint of the loop holds
SUMS = ("train_loss", "train_correct", "train_n", "valid_loss", "valid_correct", "valid_n")


STOP_FILE = None  # a sweep's stop request (``<sweep>/.stop``, written by its master): the running job stops too


class StopFlag:
    """Set by SIGINT (Ctrl-C), SIGTERM, SIGUSR1 or SIGUSR2 (Slurm preemption, time limit; submitit's signal is USR2),
    or by a stopped sweep's :data:`STOP_FILE`; the loop checkpoints at the next step boundary, then :meth:`chain`
    hands the signal to the previous handler (submitit requeues the job there). A second Ctrl-C exits at once (the
    last checkpoint is intact: every run file is written to a temporary file and renamed)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self._signal = None
        self._old = {}

    @property
    def signal(self):
        if self._signal is None and STOP_FILE is not None and os.path.exists(STOP_FILE):
            self._signal = read_stop_file(STOP_FILE)
        return self._signal

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def peer(self):
        """Another rank received a signal (:func:`nasrun.distributed.agree`): stop here too."""
        if self._signal is None:
            self._signal = "SIGTERM"

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self._signal is not None:
            exit_now()
        self._signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _previous(self):
        previous = self._old.get(getattr(signal, self._signal, None))
        return previous if callable(previous) and previous not in (signal.default_int_handler,) else None

    def has_next(self):
        """Whether a launcher's handler (submitit's requeue) was installed before ours for the received signal."""
        previous = self._previous()
        return previous is not None and not getattr(previous, "nasrun_sweep", False)

    def chain(self):
        """After the checkpoint, pass the signal on to the handler that was there before (under submitit: its
        requeue, which resubmits the job and exits; a sweep's master: no new job starts); returns if none."""
        previous, sig = self._previous(), getattr(signal, self._signal, None)
        self.__exit__()
        if previous is not None:
            previous(sig, None)


def read_stop_file(path):
    try:
        return open(path).read().strip() or "SIGTERM"
    except OSError:
        return "SIGTERM"


def exit_now():
    """A second Ctrl-C: leave at once, saying so in one line."""
    print("\nnasrun: second Ctrl-C: exiting now; the last checkpoint is intact (rerun to resume from it)", file=sys.stderr,
          flush=True)
    os._exit(130)


def stop_for_signal(stop, where):
    """After a signalled run wrote its checkpoint (``where`` says what it holds): pass the signal on to the launcher's
    handler (submitit requeues the job) and raise :class:`Interrupted` (exit code 3, 130 for Ctrl-C)."""
    if stop.has_next():
        console.print(f"received {stop.signal}: {where}; passing the signal on to the launcher (submitit requeues "
                      "the job, which resumes from this checkpoint)")
    name = stop.signal
    try:
        stop.chain()
    except Exception as exc:  # noqa: BLE001 - submitit refuses the requeue by raising (its UncompletedJobError)
        if type(exc).__name__ != "UncompletedJobError":
            raise
        reason = str(exc).strip().rstrip(".")
        if "too many times" in reason:
            reason += " (hydra.launcher.max_num_timeout)"
        raise Interrupted(f"received {name}; {where}; not requeued: {reason}; rerun the sweep to resume it (raise "
                          "hydra.launcher.timeout_min or max_num_timeout)", signal=name) from None
    raise Interrupted(f"received {name}; {where}", signal=name)


def cpu_copy(obj):
    """A detached CPU copy of every tensor in a nested state (dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(this_device=False):
    """Torch's CPU generator, Python's, NumPy's and CUDA's: every device's (a checkpoint), or with ``this_device`` only
    this process's current one (what rank 0 hands the other ranks, each of which draws on its own device)."""
    cuda = None
    if torch.cuda.is_available():
        cuda = torch.cuda.get_rng_state() if this_device else torch.cuda.get_rng_state_all()
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state):
    """Restore :func:`rng_state` (a single CUDA state goes to this process's current device)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        if isinstance(state["cuda"], torch.Tensor):
            torch.cuda.set_rng_state(state["cuda"])
        else:
            torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def accumulate(sums, out, n_train, n_valid):
    """Add one step's detached losses/correct counts (device tensors) to the epoch sums.

    A step over several batches reports its own counts as ``train_n``/``valid_n`` (losses are means).
    """
    n_train, n_valid = out.get("train_n", n_train), out.get("valid_n", n_valid)
    if "train_loss" in out:
        sums["train_loss"] += out["train_loss"].double() * n_train
        sums["train_correct"] += out["train_correct"]
        sums["train_n"] += n_train
    if "valid_loss" in out:
        sums["valid_loss"] += out["valid_loss"].double() * n_valid
        sums["valid_correct"] += out["valid_correct"]
        sums["valid_n"] += n_valid


def means(sums):
    """Epoch means (the only host sync of an epoch): losses, accuracies in %, image count."""
    s = {k: v.item() for k, v in sums.items()}

    def ratio(a, b, scale=1.0):
        return scale * s[a] / s[b] if s[b] else None

    return {"train_loss": ratio("train_loss", "train_n"), "train_acc": ratio("train_correct", "train_n", 100),
            "valid_loss": ratio("valid_loss", "valid_n"), "valid_acc": ratio("valid_correct", "valid_n", 100),
            "train_n": s["train_n"]}


def snapshot_path(run_dir, epoch):
    """The state kept after ``epoch`` (0-based) of a run: ``snapshots/epoch_<e>.pt`` (a rollback target, or kept for
    ``nasrun select snapshot=E`` with ``trainer.keep_snapshots``)."""
    return Path(run_dir) / "snapshots" / f"epoch_{epoch:03d}.pt"


def snapshot_epochs(run_dir):
    """The epochs a run holds a snapshot of, in order."""
    return sorted(int(p.stem.split("_")[1]) for p in (Path(run_dir) / "snapshots").glob("epoch_*.pt"))


class EpochLoop:
    """Resumable loop over ``epochs`` passes of ``stream``.

    Args:
        run: the :class:`~nasrun.rundir.RunDir`.
        stateful: ``{name: obj}`` whose ``state_dict``/``load_state_dict`` go into the checkpoint.
        stream: batch source with ``steps``, ``start_epoch``, ``batch`` (an epoch is a pure function of its number).
        device: where the sums live.
        progress: show a rich progress bar.
        layout: memory format applied to image batches.
    """

    def __init__(self, run, stateful, stream, device, progress=True, layout=torch.contiguous_format):
        self.run, self.stateful, self.stream, self.device = run, stateful, stream, device
        self.progress, self.layout = progress, layout
        self.epoch, self.step, self.history, self.elapsed = 0, 0, [], 0.0
        self.overhead = 0.0  # seconds of per-epoch work outside the steps (diagnostics, logging, checkpoints)
        self.sums = self._zero()
        self.frozen, self.selection = None, None  # see :meth:`freeze`; a selector's saved progress
        self.last_batch, self.stop_epoch = None, None
        self.events = []  # run-level events that survive rollbacks (DARTS-ADA), saved in the checkpoint
        self.trackers = None  # live trackers (nasrun.loggers.Trackers): each committed epoch's record goes to them

    def _zero(self):
        return {k: torch.zeros((), device=self.device, dtype=torch.float64) for k in SUMS}

    def resume(self, state, quiet=False):
        """Restore everything from a checkpoint dict (as written by :meth:`checkpoint`)."""
        missing = [k for k in (*self.stateful, *LOOP_STATE) if k not in state]
        if missing:
            raise UserError(f"the checkpoint in {self.run.path} is not one of this run's kind (no {', '.join(missing)}); "
                            "delete it to start over")
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        set_rng_state(state["rng"])
        self.epoch, self.step, self.history, self.elapsed = state["epoch"], state["step"], state["history"], state["elapsed"]
        self.overhead = state.get("overhead", 0.0)
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        if not WORLD.main:  # rank 0's checkpoint holds the sums of all ranks so far (see :meth:`reduce_shards`)
            self.sums = self._zero()
        if not quiet:
            self.events = state.get("events", [])
        if self.step:  # the stream's epoch is a pure function of (seed, epoch)
            self.stream.start_epoch(self.epoch)
        if not quiet:
            console.print(f"resuming {self.run.path} in epoch {self.epoch + 1} after step {self.step}")

    def snapshot_path(self, epoch):
        return snapshot_path(self.run.path, epoch)

    def rollback(self, epoch):
        """Restore the full state after ``epoch`` from its snapshot (weights, α, optimisers, RNG, history)."""
        path = self.snapshot_path(epoch)
        if not path.exists():
            raise UserError(f"cannot roll back to the end of epoch {epoch + 1}: {path} is missing; rerun without the "
                            "rollback rule")
        self.resume(read_checkpoint(path, (), "rerun without the rollback rule"), quiet=True)
        self.run.truncate_metrics(self.epoch)

    def drop_snapshots(self, keep=None):
        """Remove the rollback snapshots, all of them or those whose epoch ``keep(epoch)`` does not keep."""
        folder = self.run.path / "snapshots"
        if not WORLD.main or not folder.exists():
            return
        if keep is None:
            shutil.rmtree(folder)
            return
        for epoch in snapshot_epochs(self.run.path):
            if not keep(epoch):
                snapshot_path(self.run.path, epoch).unlink()

    def freeze(self):
        """Keep the current (trained) states: later checkpoints write these, whatever a selector does to the live
        objects (DARTS-PT fine-tunes the supernet), so the checkpoint always holds the trained supernet."""
        self.frozen = {n: cpu_copy(o.state_dict()) for n, o in self.stateful.items()}

    def checkpoint(self, finished=False, summary=None, snapshot=False, trained=False):
        """Write checkpoint.pt; with ``snapshot`` first keep the same state as ``snapshots/epoch_<e>.pt``
        (e = the epoch just finished) for a later :meth:`rollback`. ``trained``: training is over (selection
        may still be to come), so ``nasrun select`` can use this state whatever happens next; a selector's
        progress (:attr:`selection`) rides along until the run finishes."""
        states = self.frozen or {n: o.state_dict() for n, o in self.stateful.items()}
        self.run.save_checkpoint({**states, "selection": None if finished else self.selection, "epoch": self.epoch,
                                  "step": self.step, "history": self.history, "elapsed": self.elapsed,
                                  "overhead": self.overhead,
                                  "rng": rng_state(),
                                  "sums": {k: v.cpu() for k, v in self.sums.items()}, "finished": finished,
                                  "trained": trained or finished, "summary": summary, "events": self.events},
                                 also=self.snapshot_path(self.epoch - 1) if snapshot else None)

    def _batch(self, step):
        train, valid = self.stream.batch(step)
        fmt = self.layout
        return ((train[0].contiguous(memory_format=fmt), train[1]),
                (valid[0].contiguous(memory_format=fmt), valid[1]) if valid is not None else None)

    def reduce_shards(self):
        """Add the ranks' per-rank sums of the epoch so far (the loop's, and a stateful object's ``reduce_shards``:
        SP-DARTS's monitor counts) into every rank's; the one collective of the metrics, at an epoch's end or before a
        checkpoint that a signal asked for (which rank 0 then writes with the sums of all ranks)."""
        if not WORLD.active:
            return
        reduce_sums(self.sums)
        for obj in self.stateful.values():
            if hasattr(obj, "reduce_shards"):
                obj.reduce_shards()

    def _epoch_end(self, epoch_end, m, seconds):
        """``epoch_end``'s record; with several ranks computed by rank 0 alone (diagnostics, benchmark query) and sent
        to every rank with rank 0's random state after it, so all ranks go on as one process would."""
        if not WORLD.active:
            return epoch_end(self.epoch, m, seconds)
        record, state = shared(lambda: (epoch_end(self.epoch, m, seconds), rng_state(this_device=True)))
        set_rng_state(state)
        return record

    def fit(self, epochs, step_fn, epoch_start, epoch_end, log, group=1, stop_fn=None, snapshot_fn=None):
        """Run the remaining epochs; ``step_fn(train, valid)`` returns detached device tensors.

        With ``group > 1`` (TSE-DARTS) ``step_fn`` receives a list of up to ``group`` consecutive
        ``(train, valid)`` batches; interrupts then land on group boundaries, so resumes stay exact.
        ``stop_fn(history)`` returns the epoch to roll back to when an early-stopping rule fires; it is
        checked before every epoch, so a resumed run stops at the same place; it may instead call
        :meth:`rollback` and return None to go on from an earlier epoch. ``snapshot_fn(epoch)`` says which
        epochs' checkpoints to keep under ``snapshots/`` as rollback targets.
        """
        self.run.truncate_metrics(self.epoch)
        bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=console, transient=True, disable=not self.progress)
        try:
            with StopFlag() as stop, bar:
                while self.epoch < epochs:
                    if stop_fn is not None and self.history and self.step == 0:
                        self.stop_epoch = stop_fn(self.history)
                        if self.stop_epoch is not None:
                            console.print(f"early stop after epoch {self.epoch}: keeping epoch {self.stop_epoch + 1}")
                            break
                    epoch_start(self.epoch)
                    if self.step == 0:
                        self.stream.start_epoch(self.epoch)
                    task = bar.add_task("", total=self.stream.steps, completed=self.step, epoch=f"{self.epoch + 1}/{epochs}")
                    tic = time.perf_counter()
                    while self.step < self.stream.steps:
                        n = min(group, self.stream.steps - self.step)
                        batches = [self._batch(self.step + k) for k in range(n)]
                        out = step_fn(*batches[0]) if group == 1 else step_fn(batches)
                        self.last_batch = batches[-1]
                        train, valid = batches[0]
                        accumulate(self.sums, out, len(train[1]), len(valid[1]) if valid is not None else 0)
                        self.step += n
                        bar.advance(task, n)
                        if agree(stop.signal):  # several ranks: a signal to any of them stops all at this step
                            stop.peer()
                            self.elapsed += time.perf_counter() - tic
                            self.reduce_shards()
                            self.checkpoint()
                            barrier()  # rank 0 has written it before any rank exits (torchrun ends the others)
                            stop_for_signal(stop, f"checkpoint written in epoch {self.epoch + 1} after step {self.step} in "
                                                  f"{self.run.path}")
                    bar.remove_task(task)
                    seconds = time.perf_counter() - tic
                    self.elapsed += seconds
                    self.reduce_shards()
                    m = means(self.sums)
                    if not all(math.isfinite(m[k]) for k in ("train_loss", "valid_loss") if m[k] is not None):
                        kept = (f"the checkpoint after epoch {self.epoch} is kept in {self.run.path}" if self.epoch
                                else "no epoch had completed, so no checkpoint was written")
                        raise UserError(f"loss became NaN/inf in epoch {self.epoch + 1}; {kept}; lower the learning rates "
                                        "or check the data (dataset.mean/std)")
                    tic = time.perf_counter()
                    record = self._epoch_end(epoch_end, m, seconds)
                    record["epoch_end_seconds"] = round(time.perf_counter() - tic, 3)  # diagnostics, query, logging
                    self.history.append(record)
                    self.run.append_metrics(record)
                    log(record, epochs)
                    self.epoch, self.step, self.sums = self.epoch + 1, 0, self._zero()
                    self.overhead += time.perf_counter() - tic
                    tic = time.perf_counter()
                    self.checkpoint(snapshot=snapshot_fn is not None and snapshot_fn(self.epoch - 1))
                    if self.trackers is not None:  # after the checkpoint: a tracker never sees an uncommitted epoch
                        self.trackers.log(record)
                    self.overhead += time.perf_counter() - tic
        except torch.OutOfMemoryError:
            total = (torch.cuda.get_device_properties(self.device).total_memory / 2**30
                     if self.device.type == "cuda" else float("nan"))
            raise UserError(f"out of memory on {self.device} ({total:.1f} GiB) at batch size {self.stream.batch_size}; "
                            "lower the batch size or the network width") from None
