"""One run over several processes with ``torch.distributed`` (data parallel; issue 24).

``torchrun --nproc-per-node N`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or N Slurm tasks (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID; the first node of the job is the rendezvous) start N copies of one ``nasrun search|eval``.
:func:`start` joins them into a process group (gloo on the CPU, NCCL on CUDA; a collective that waits longer than
``$NASRUN_DIST_TIMEOUT`` seconds fails, so a dead rank brings the others down). Every rank draws the same global batch
of each step from the same (seed, epoch) generator and keeps its shard (:func:`shard`); gradients are averaged over
the ranks at every step (:func:`average`), so the ranks hold the same weights, α and optimiser states throughout, and
with ``trainer.sync_bn`` (:func:`batch_norm`: batch statistics over the global batch) a run of N ranks × B/N images
computes what one process computes on B. Rank 0 alone writes the run directory.
"""

import atexit
import datetime
import os
import socket
import subprocess
import time

import torch
import torch.nn.functional as F

from .errors import UserError


class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    def __init__(self, rank=0, size=1, local_rank=0):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.sync_bn = False  # batch statistics over all ranks (trainer.sync_bn)
        self.solo = False  # rank 0 working alone (main_only: selection, diagnostics): it acts as one process

    @property
    def main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.size > 1

    @property
    def collective(self):
        """Every rank takes part in what runs now (the steps): shards, gradient averages, synced BatchNorm."""
        return self.size > 1 and not self.solo


WORLD = World()


def env_world(environ=None):
    """``(rank, size, local_rank)`` from torchrun's or Slurm's variables, or None for a single process. Slurm's are read
    only inside a job step of several tasks (``srun``, submitit), not in a batch script that holds the allocation."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        size, rank, local = int(env["WORLD_SIZE"]), int(env["RANK"]), int(env.get("LOCAL_RANK", 0))
    elif int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:  # srun's tasks, not sbatch's
        size, rank, local = int(env["SLURM_STEP_NUM_TASKS"]), int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0))
    else:
        return None
    return (rank, size, local) if size > 1 else None


def _slurm_master(env):
    """The rendezvous of a Slurm job's tasks: its first node, a port derived from the job id."""
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or socket.gethostname()
    try:
        first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               check=True).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        first = nodes.split(",")[0]
    return first, str(20000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000)


def start():
    """Join the process group when this process is one of several (else nothing); returns :data:`WORLD`."""
    import torch.distributed as dist

    found = env_world()
    if found is None or dist.is_initialized():
        return WORLD
    rank, size, local = found
    if "MASTER_ADDR" not in os.environ:  # Slurm tasks without torchrun
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = _slurm_master(os.environ)
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"] = str(rank), str(size), str(local)
    timeout = datetime.timedelta(seconds=float(os.environ.get("NASRUN_DIST_TIMEOUT", 1800)))
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timeout)
    atexit.register(_leave)
    WORLD.rank, WORLD.size, WORLD.local_rank = rank, size, local
    return WORLD


def _leave():
    """Leave the process group before the interpreter's teardown. A gloo worker thread drops its last collective's
    tensors after that collective returned; should it reach for the GIL while the interpreter finalises, the thread
    is ended inside C++ and the process aborts ("terminate called without an active exception") after a finished
    run. Leaving the group and giving up the GIL for a moment lets it finish first."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    time.sleep(0.2)


def barrier():
    if WORLD.collective:
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if not WORLD.collective:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_only(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0 alone (files, selection, summaries); its result there, None on the others. A
    :class:`UserError` it raises is raised on every rank with the same message (nobody waits for a rank that failed)."""
    if not WORLD.collective:
        return fn(*args, **kwargs)
    result, error = None, None
    if WORLD.main:
        WORLD.solo = True
        try:
            result = fn(*args, **kwargs)
        except UserError as exc:
            error = str(exc)
        except BaseException as exc:
            WORLD.solo = False
            broadcast(f"rank 0 failed ({type(exc).__name__}: {exc})")
            raise
        finally:
            WORLD.solo = False
    error = broadcast(error)
    if error:
        raise UserError(error)
    return result


def shared(fn, *args, **kwargs):
    """:func:`main_only`, its (picklable) result then sent to every rank."""
    return broadcast(main_only(fn, *args, **kwargs))


def agree(flag):
    """True on every rank when ``flag`` is true on any (a signal received by one rank stops all of them)."""
    if not WORLD.collective:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average(tensors):
    """The tensors (gradients) averaged over the ranks, with one collective: a list of new tensors (one process: the
    tensors themselves).

    Every rank's shard has the same size, so the mean of the per-rank mean-loss gradients is the gradient of the
    global batch's mean loss."""
    tensors = list(tensors)
    if not WORLD.collective or not tensors:
        return tensors
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= WORLD.size
    return [part.view(t.shape) for t, part in zip(tensors, flat.split([t.numel() for t in tensors]))]


def average_grads(params):
    """Replace the ``.grad`` of ``params`` (those that have one) by its mean over the ranks."""
    if not WORLD.collective:
        return
    params = [p for p in params if p.grad is not None]
    for p, g in zip(params, average([p.grad for p in params])):
        p.grad = g


def reduce_sums(sums):
    """The epoch's accumulated sums (``{name: 0-d tensor}``) added over the ranks, in place (the same tensors)."""
    if not WORLD.collective:
        return sums
    import torch.distributed as dist

    names = sorted(sums)
    flat = torch.stack([sums[k].double() for k in names])
    dist.all_reduce(flat)
    for k, v in zip(names, flat):
        sums[k].copy_(v)
    return sums


def shard(index, n_total=None):
    """This rank's part of the rows of a global batch (``index``: any tensor whose first dimension is the batch):
    rows ``[r·m, (r+1)·m)`` of the first ``size·m`` (m = n // size; a last batch that the world size does not divide
    loses its last rows, fewer than ``size``)."""
    if not WORLD.collective or index is None:
        return index
    n = len(index) if n_total is None else n_total
    m = n // WORLD.size
    return index[WORLD.rank * m:(WORLD.rank + 1) * m]


def check_batch(key, batch_size):
    """Refuse a global batch that the world size does not divide."""
    if WORLD.collective and batch_size % WORLD.size:
        raise UserError(f"{key}={batch_size} is the global batch and {WORLD.size} processes cannot share it equally; "
                        f"give a multiple of {WORLD.size}")


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients (each rank's loss is its
    shard's share of the global loss)."""

    @staticmethod
    def forward(ctx, t):
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        return _SumOverRanks.apply(grad)


def _global_mean_var(x):
    """Per-channel mean and (biased) variance of the global batch, ``x`` being this rank's shard: the sum, then the
    centred sum of squares, over the ranks (differentiable); and the global count per channel."""
    dims = [0, *range(2, x.dim())]
    count = x.numel() // x.shape[1] * WORLD.size
    mean = _SumOverRanks.apply(x.sum(dims)) / count
    centred = x - mean.view([1, -1] + [1] * (x.dim() - 2))
    return mean, _SumOverRanks.apply((centred * centred).sum(dims)) / count, count


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """``F.batch_norm`` whose batch statistics, when :attr:`World.sync_bn` is on, are those of the global batch: the
    sum and the centred sum of squares over all ranks' shards (autograd-aware collectives, so the backward is that of
    one process on the whole batch). Running statistics follow with the global (unbiased) variance."""
    if not (training and WORLD.collective and WORLD.sync_bn):
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    mean, var, count = _global_mean_var(x)
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            running_var.mul_(1 - momentum).add_(var.detach() * count / max(count - 1, 1), alpha=momentum)
    return y


@torch.no_grad()
def batch_var_mean(x):
    """Per-channel (unbiased variance, mean) of an NCHW batch, over the global batch under :attr:`World.sync_bn`."""
    if not (WORLD.collective and WORLD.sync_bn):
        return torch.var_mean(x, dim=(0, 2, 3), correction=1)
    mean, var, count = _global_mean_var(x)
    return var * count / max(count - 1, 1), mean


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """``BatchNorm2d`` that normalises with the global batch's statistics under ``trainer.sync_bn`` (same state)."""

    def forward(self, x):
        if not (self.training and WORLD.collective and WORLD.sync_bn):
            return super().forward(x)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        return batch_norm(x, self.running_mean if self.track_running_stats else None,
                          self.running_var if self.track_running_stats else None, self.weight, self.bias, True,
                          0.1 if self.momentum is None else self.momentum, self.eps)


def convert_sync_bn(module):
    """Every ``BatchNorm2d`` of ``module`` becomes a :class:`GlobalBatchNorm2d` (parameters and buffers kept)."""
    for m in module.modules():
        if type(m) is torch.nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
    return module


def check_world(obj, key, label):
    """Refuse, in one line, a part (a method's class) that has not been made to run on several processes."""
    if WORLD.active and not type(obj).__dict__.get("distributed", False):
        raise UserError(f"{label} does not yet run on several processes ({WORLD.size} started); run it in one process "
                        f"(without torchrun / Slurm tasks); a {key} says it does with `distributed = True` in its class "
                        "once every gradient its step computes is averaged (nasrun.distributed.average)")


class world_settings:
    """The process-wide settings of one run, restored after it: ``trainer.dtype`` (torch's default floating type) and
    ``trainer.sync_bn`` (:attr:`World.sync_bn`)."""

    def __init__(self, trainer):
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[trainer.get("dtype", "float32")]
        self.sync_bn = bool(trainer.get("sync_bn", False))

    def __enter__(self):
        self.saved = torch.get_default_dtype(), WORLD.sync_bn
        torch.set_default_dtype(self.dtype)
        WORLD.sync_bn = self.sync_bn
        return self

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved[0])
        WORLD.sync_bn = self.saved[1]
