"""Small helpers: seeding, atomic writes, environment capture, parameter counts and FLOPs."""

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# torch is imported where it is used: the sweep launchers and the command line's checks import this module


def current_umask():
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, write_fn):
    """Write a file atomically: ``write_fn(fileobj)`` into a temp file beside ``path``, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path):
    """``torch.save`` through a temp file and rename, so a kill never leaves a half-written checkpoint."""
    import torch

    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def write_json(path, obj):
    """Write pretty JSON atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def _json_default(obj):
    if hasattr(obj, "tolist"):  # tensors and numpy values (a 0-d one becomes a number)
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def json_line(obj):
    """One compact JSON line (tensors become lists)."""
    return json.dumps(obj, default=_json_default)


def count_parameters(module, exclude="auxiliary"):
    """Number of trainable parameters, skipping those whose name contains ``exclude`` (DARTS rule)."""
    return sum(p.numel() for n, p in module.named_parameters() if not (exclude and exclude in n))


def count_flops(module, input_shape):
    """Multiply-accumulate count of Conv2d and Linear layers for one input, as NAS-Bench-201 reports it.

    NAS-Bench-201's FLOPs (AutoDL ``get_model_infos``) count convolutions and linear layers including
    their bias; pooling contributes nothing to the published values (their min/max in methods.md §8.3
    are reproduced exactly by this rule).
    """
    import torch

    total = [0]

    def conv_hook(m, inp, out):
        kh, kw = m.kernel_size
        positions = out.shape[0] * out.shape[2] * out.shape[3]
        total[0] += kh * kw * m.in_channels * m.out_channels // m.groups * positions
        if m.bias is not None:
            total[0] += m.out_channels * positions

    def linear_hook(m, inp, out):
        total[0] += inp[0].shape[0] * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))

    handles = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(*input_shape))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return total[0] / input_shape[0]


def full_precision(t):
    """``t`` in float32 when autocast left it in half precision, else as it is (float64 stays float64)."""
    import torch

    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def hydra_config():
    """The running Hydra job's config (``HydraConfig``), or None outside a Hydra app (tests, the Python API)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def job_cpus():
    """CPUs this job was given: the process's CPU affinity, capped by Slurm's ``SLURM_CPUS_PER_TASK`` and, in
    a sweep, by the launcher (``cpus_per_task``; joblib's share of the cores among ``n_jobs``)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        n = min(n, int(os.environ["SLURM_CPUS_PER_TASK"]))
    hc = hydra_config()
    launcher = hc.launcher if hc is not None else {}
    if launcher.get("cpus_per_task"):
        n = min(n, int(launcher["cpus_per_task"]))
    jobs = launcher.get("n_jobs")
    if jobs:
        n = n // (jobs if jobs > 0 else n)
    return max(1, n)


def set_threads(threads):
    """torch's intra-op CPU thread count: an int fixes it (a CPU run's floating-point reductions, hence its
    result, depend on it); ``auto`` uses the CPUs this job was given (:func:`job_cpus`), so jobs that share
    a machine do not oversubscribe it. Returns a warning when a fixed count exceeds those CPUs."""
    import torch

    if threads in (None, "auto"):
        torch.set_num_threads(job_cpus())
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        from .errors import UserError

        raise UserError(f"trainer.threads={threads!r}: give a positive number of CPU threads, or auto")
    torch.set_num_threads(threads)
    given = job_cpus()
    if threads > given:
        return (f"trainer.threads={threads} but this job has {given} CPU(s): it will run oversubscribed (slowly); "
                f"lower trainer.threads or give the job more CPUs")
    return None


def environment(argv=None):
    """Facts about the machine and software for ``env.json``."""
    from importlib import metadata

    import torch

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    cuda = torch.cuda.is_available()
    return {
        "nasrun": version("nasrun"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "hydra-core": version("hydra-core"),
        "omegaconf": version("omegaconf"),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "job_cpus": job_cpus(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_sha": sha,
        "argv": list(argv if argv is not None else sys.argv),
        "command": _command(),
        "slurm_job_id": _slurm_job(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _command():
    """The nasrun command this run is (``nasrun search seed=3 ...``): in a sweep, one job's overrides."""
    hc = hydra_config()
    if hc is not None:
        return " ".join(["nasrun", hc.job.name, *hc.overrides.task])
    return " ".join(["nasrun", *sys.argv[1:]]) if Path(sys.argv[0]).name == "nasrun" else None


def _slurm_job():
    """Slurm's id of this job: ``<array job>_<task>`` for an array task (a sweep), else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def resolve_device(name):
    """``auto`` picks CUDA when available."""
    import torch

    from .distributed import WORLD

    if WORLD.active and name in ("auto", "cuda") and torch.cuda.is_available():  # one device per rank
        return torch.device("cuda", WORLD.local_rank % torch.cuda.device_count())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import UserError

        raise UserError(f"trainer.device={name} but CUDA is not available; use trainer.device=cpu or auto")
    return torch.device(name)
