"""Live experiment trackers: TensorBoard, MLflow and Weights & Biases behind one seam (the ``logger`` group).

The epoch loop hands each epoch's record to :class:`Trackers` once that epoch is committed (its metrics.jsonl line
and its checkpoint written), so a tracker sees exactly what ``metrics.jsonl`` holds, with no device work and no host
sync of its own, and nothing in the training code knows which tracker is on. Every tracker receives the same
things: the composed config (flattened keys) at the start, per epoch every number of the record (nested ones as
``benchmark/test_acc``), the mixing weights of each cell type as a heat-map image and a histogram, and the genotype
as text, and at the end the run's artefacts. ``<run>/trackers.json`` keeps each tracker's run id and the epochs
already sent: a resumed or requeued run continues the same tracker run, first sending any committed epoch it had
not sent yet, and never sends an epoch twice.

A tracker is a class with ``open(run_dir, info, state, logged) -> state`` (``logged``: the epochs it has had; the
state it returns may raise that number from what its store holds), ``log(epoch, scalars, images, histograms,
genotype)``, ``artefacts(paths)`` and ``close(finished)``; its package is imported when it is built, so a missing
one is refused in one line before anything runs.
"""

import importlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..utils import write_json

STATE_FILE = "trackers.json"
SKIP = {"epoch", "alpha", "alpha_raw", "genotype"}


def require(package, extra):
    """Import ``package`` or refuse in one line naming what to install."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(f"logger={extra} needs the {package.split('.')[0]} package: pip install 'nasrun[{extra}]' "
                        f"(or drop logger={extra})") from None


@dataclass
class RunInfo:
    """What a tracker names and groups a run by: ``name`` (a sweep job: its overrides), ``group`` (the sweep
    directory, or the command for a single run) and the flattened ``config``."""

    name: str
    group: str
    config: dict
    nested: dict


def run_info(run_dir, config):
    """Name and group of the run in ``run_dir`` from the running Hydra job (a sweep job is named by its overrides
    and grouped by its sweep directory; a single run by its directory name and the command)."""
    from ..utils import hydra_config

    hc, task = hydra_config(), str(config.get("task_name", "run"))
    name, group = Path(run_dir).name, f"nasrun-{task}"
    if hc is not None and str(hc.mode) == "RunMode.MULTIRUN":
        swept = swept_keys(Path(hc.sweep.dir))
        job = [o for o in hc.overrides.task if swept is None or o.split("=", 1)[0].lstrip("+~") in swept]
        name = ",".join(job) or str(hc.job.num)
        group = str(Path(hc.sweep.dir))
    return RunInfo(name, group, flatten(config), config)


def swept_keys(sweep_dir):
    """The keys a sweep varies (``seed=0,1`` → ``seed``), from the command line Hydra saved in its multirun.yaml;
    None where that file is missing."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    raw = list(OmegaConf.load(path).hydra.overrides.task)
    return {o.key_or_group if not o.package else f"{o.key_or_group}@{o.package}"
            for o in OverridesParser.create().parse_overrides(raw) if o.is_sweep_override()}


def safe_name(name, limit=100):
    """A run name usable as one folder name: no slashes, and long ones cut with a hash to keep them apart."""
    import hashlib

    name = name.replace("/", "_").replace("\\", "")
    if len(name) > limit:
        name = f"{name[:limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def flatten(tree, prefix="", sep="."):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + sep, sep))
        else:
            out[key] = v
    return out


def scalars_of(record):
    """The numbers of an epoch record (booleans as 0/1, nested dicts as ``a/b``; lists, text and None left out)."""
    out = {}
    for key, value in flatten({k: v for k, v in record.items() if k not in SKIP}, sep="/").items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and np.isfinite(value):
            out[key] = float(value)
    return out


def alpha_image(weights, ops=None, title=""):
    """A heat map of one cell type's mixing weights (edges × ops) as an ``H×W×3`` uint8 array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = np.asarray(weights, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * w.shape[1], 0.8 + 0.32 * w.shape[0]), dpi=80)
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(w.max())), aspect="auto")
    ax.set_ylabel("edge")
    ax.set_yticks(range(w.shape[0]))
    if ops is not None and len(ops) == w.shape[1]:
        ax.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    from PIL import Image

    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


class Trackers:
    """The trackers of one run (``logger`` group): started with the run, fed every committed epoch, finished with
    its artefacts.

    Args:
        trackers: tracker objects (built from ``cfg.logger``).
    """

    def __init__(self, trackers):
        self.trackers = list(trackers)
        self.run_dir, self.state, self.ops = None, {}, {}

    def sent(self, tracker):
        """Epochs ``tracker`` has had (0, 1, …, sent − 1)."""
        return self.state.get(tracker.name, {}).get("logged", 0)

    def start(self, run, config, committed, ops=None):
        """Open every tracker for ``run`` (continuing the runs named in trackers.json) and send each the committed
        epochs (the first ``committed`` lines of metrics.jsonl; None: all, and what was sent after them stays) it
        has not had yet. ``ops``: ``{cell type: op names}`` for the heat maps' columns."""
        self.run_dir, self.ops = Path(run.path), dict(ops or {})
        try:
            self.state = json.loads((self.run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            self.state = {}
        info = run_info(self.run_dir, config)
        for t in self.trackers:
            old = self.state.get(t.name, {})
            limit = float("inf") if committed is None else committed
            logged = min(old.get("logged", 0), limit)
            new = t.open(self.run_dir, info, old, logged)  # may know better what its store holds (MLflow)
            self.state[t.name] = {**new, "logged": min(limit, max(logged, new.get("logged", 0)))}
        self._save()
        first = min((self.sent(t) for t in self.trackers), default=0)
        for record in run.read_metrics()[first:committed]:
            self.log(record)

    def log(self, record):
        """Send one committed epoch record to every tracker that has not had it (trackers.json says which)."""
        epoch = int(record["epoch"])
        todo = [t for t in self.trackers if epoch >= self.sent(t)]  # a rollback (DARTS-ADA) re-runs sent epochs
        if not todo:
            return
        alphas = {k: np.asarray(v, dtype=float) for k, v in (record.get("alpha") or {}).items()}
        images = {k: alpha_image(v, self.ops.get(k), f"{k}, epoch {epoch + 1}") for k, v in alphas.items()}
        for t in todo:
            t.log(epoch, scalars_of(record), images, alphas, record.get("genotype"))
            self.state[t.name]["logged"] = epoch + 1
            self._save()

    def finish(self, paths=()):
        """Send the run's artefacts (the files of ``paths`` that exist) and close every tracker as finished."""
        files = [Path(p) for p in paths if Path(p).is_file()]
        for t in self.trackers:
            t.artefacts(files)
            t.close(finished=True)

    def close(self):
        """Close every tracker without finishing its run (an interrupted or failed run resumes it)."""
        for t in self.trackers:
            t.close(finished=False)

    def _save(self):
        write_json(self.run_dir / STATE_FILE, self.state)


def build_trackers(node):
    """:class:`Trackers` from the ``logger`` config (``{name: {_target_, ...}}``; empty or None: no trackers). Every
    rank of a run over several processes builds them (a missing package is refused everywhere); rank 0 alone gets
    them."""
    from ..config import build
    from ..console import is_main

    node = dict(node or {})
    trackers = Trackers(build(v) for _, v in sorted(node.items()) if v) if node else None
    return trackers if is_main() else None
