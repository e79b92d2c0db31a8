"""The run directory contract (design.md §5): config, env, metrics, checkpoint, summary."""

import json
from pathlib import Path

from omegaconf import OmegaConf

from .distributed import WORLD, main_only
from .errors import UserError
from .files import read_checkpoint, read_yaml
from .utils import atomic_torch_save, environment, json_line, set_threads, write_json

# Keys that may change between a run and its resume without changing the result's meaning.
# The fused ops and CUDA graphs compute the same function as the per-op eager path (perf.md §4).
RESUME_FREE = ("trainer.progress", "trainer.device", "trainer.log_every", "trainer.fused", "trainer.cuda_graphs",
               "trainer.cuda_graphs_verify",
               "trainer.compile", "logger")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old, new):
    """``["key: old -> new", ...]`` for the keys that differ, ignoring :data:`RESUME_FREE`."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(RESUME_FREE)]


def run_kind(path):
    """The command that made the run (or sweep) directory ``path`` (``search``, ``eval``, ``select``), or None when it
    holds no nasrun run."""
    path = Path(path)
    sources = ((path / ".hydra" / "hydra.yaml", lambda c: c.hydra.job.name),
               (path / "multirun.yaml", lambda c: c.hydra.job.name), (path / "config.yaml", lambda c: c.get("task_name")))
    for file, read in sources:
        if file.exists():
            try:
                kind = read(OmegaConf.load(file))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
                raise UserError(f"{file} is unreadable ({type(exc).__name__}); give another output directory") from None
            return None if kind is None else str(kind)
    return None


def _try_lock(f):
    """Take an exclusive lock on the open file ``f`` without waiting: None when taken, else who holds it (the line the
    holder wrote there)."""
    import fcntl

    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except OSError:
        f.seek(0)
        return f.read().strip() or "another process"


def lock_holder(path):
    """Who holds ``<path>/.lock`` (a run in progress), or None; the lock is taken and released at once."""
    import fcntl

    lock = Path(path) / ".lock"
    if not lock.exists():
        return None
    with open(lock) as f:
        holder = _try_lock(f)
        if holder is None:
            fcntl.flock(f, fcntl.LOCK_UN)
    return holder


def check_run_target(path, kind, config):
    """Refuse, before anything is written into an existing directory ``path`` (Hydra's ``.hydra/`` included), a
    command that may not continue the run there: a run of another command, a run still in progress, or one whose
    config differs from ``config`` (the resolved config of this command) other than in :data:`RESUME_FREE`."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return
    other = run_kind(path)
    if other is None:
        return
    if other != kind:
        raise UserError(f"{path} holds a nasrun {other} run; nasrun {kind} never writes into another command's run: "
                        "give another hydra.run.dir")
    holder = lock_holder(path)
    if holder:
        raise in_use(path, holder)
    saved = path / "config.yaml"
    if saved.exists():
        diff = config_diff(OmegaConf.to_container(read_yaml(saved, "give another hydra.run.dir")), config)
        if diff:
            raise different_config(path, diff)


def in_use(path, holder):
    return UserError(f"run directory {path} is in use by {holder}; wait for it to finish (or stop it), or give "
                     "another hydra.run.dir")


def different_config(path, diff):
    return UserError(f"{path} holds a run with a different config ({'; '.join(diff)}); use another hydra.run.dir or "
                     "the original overrides to resume")


def check_sweep_target(path, kind, overrides):
    """Refuse, before anything is written, a sweep into an existing sweep folder made by another command or with
    other overrides (a re-run with the same overrides resumes it: finished jobs are skipped)."""
    path = Path(path).expanduser()
    if not (path / "multirun.yaml").exists():
        return
    other = run_kind(path)
    if other != kind:
        raise UserError(f"{path} holds a nasrun {other} sweep; nasrun {kind} never writes into another command's "
                        "sweep: give another hydra.sweep.dir")
    saved = read_yaml(path / "multirun.yaml", "give another hydra.sweep.dir")
    old = [str(o) for o in OmegaConf.select(saved, "hydra.overrides.task", default=[]) or []]
    kept = [sorted(o for o in x if not o.lstrip("+~").split("=", 1)[0].startswith(RESUME_FREE)) for x in (old, overrides)]
    if kept[0] != kept[1]:
        raise UserError(f"{path} holds a sweep with other overrides (was: {' '.join(old)}); rerun it with the same "
                        "overrides to resume it, or give another hydra.sweep.dir")


class RunDir:
    """One run's directory. ``checkpoint.pt`` is written atomically; ``metrics.jsonl`` has one line per epoch."""

    def __init__(self, path, cfg):
        self.path = Path(path)
        self.writes = WORLD.main  # several processes (torch.distributed): rank 0 alone writes, every rank reads
        self._lock = main_only(self._open)
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.ckpt = self.path / "checkpoint.pt"
        self.metrics = self.path / "metrics.jsonl"

    def _open(self):
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self._acquire()
        for stale in self.path.glob(".*.tmp"):  # a write killed before its rename (we hold the lock: nobody writes)
            stale.unlink(missing_ok=True)
        return lock

    def _acquire(self):
        """An exclusive lock on ``<run>/.lock`` for this process's life (released when the object goes, or
        the process dies): a second process on the same run directory is refused, naming the holder."""
        import os
        import socket
        import time

        f = open(self.path / ".lock", "a+")
        holder = _try_lock(f)
        if holder is not None:
            f.close()
            raise in_use(self.path, holder)
        f.seek(0)
        f.truncate()
        f.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        return f

    def start(self):
        """Fix torch's CPU thread count (``trainer.threads``), send the console's lines to ``<task>.log`` here,
        write config.yaml, and record this start in env.json: the first start's environment, each later
        start (a resume, a requeue) appended under ``resumes``."""
        from .console import console

        if not self.writes:
            set_threads(self.config.get("trainer", {}).get("threads", "auto"))
            return
        console.log_path = self.path / f"{self.config.get('task_name', 'run')}.log"
        warning = set_threads(self.config.get("trainer", {}).get("threads", "auto"))
        if warning:
            console.print(f"[yellow]warning[/yellow]: {warning}")
        (self.path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(self.config)))
        env, path = environment(), self.path / "env.json"
        try:
            first = json.loads(path.read_text())
        except (OSError, ValueError):
            first = None
        if isinstance(first, dict) and first.get("started"):
            first.setdefault("resumes", []).append(env)
            env = first
        write_json(path, env)

    def load_checkpoint(self):
        """The checkpoint to resume from, or None; refuses one whose config differs (showing the diff)."""
        if not self.ckpt.exists():
            return None
        state = read_checkpoint(self.ckpt, ("config",), "delete it to start over")
        if state.get("finished") and "summary" not in state:
            raise UserError(f"{self.ckpt} is a finished run's checkpoint without its summary; delete it to start over")
        diff = config_diff(state["config"], self.config)
        if diff:
            raise different_config(self.path, diff)
        return state

    def save_checkpoint(self, state, also=None):
        """Save atomically to checkpoint.pt (and first to ``also``, a rollback snapshot, when given)."""
        if not self.writes:
            return
        state = {**state, "config": self.config}
        if also is not None:
            atomic_torch_save(state, also)
        atomic_torch_save(state, self.ckpt)

    def truncate_metrics(self, epochs_done):
        """Keep the first ``epochs_done`` lines (a kill between metrics and checkpoint leaves one extra)."""
        if not self.writes or not self.metrics.exists():
            return
        lines = self.metrics.read_text().splitlines()[:epochs_done]
        self.metrics.write_text("".join(line + "\n" for line in lines))

    def append_metrics(self, record):
        if not self.writes:
            return
        with open(self.metrics, "a") as f:
            f.write(json_line(record) + "\n")

    def read_metrics(self):
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def write(self, name, obj):
        if not self.writes:
            return
        write_json(self.path / name, obj)
