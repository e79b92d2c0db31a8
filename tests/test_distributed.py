"""Several processes (issue 24): 2 gloo ranks × B/2 images against 1 process × B, float64, on the CPU.

The equality gates run the real command under ``torchrun`` (``python -m torch.distributed.run``) and compare the final
checkpoints: weights, BN statistics, α and both optimisers' states after the run's steps. BatchNorm runs with
``trainer.sync_bn=true`` (batch statistics over the global batch, :func:`nasrun.distributed.batch_norm`): with per-rank
statistics the two computations differ by design. Drop-path is off in the retraining gate (its masks are drawn per
image on each rank's device generator).
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nasrun import distributed
from nasrun.distributed import WORLD

from .test_cli import ENV, NASRUN

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "nasrun.cli"]
SEARCH = ["space.C=4", "space.N=1", "dataset=synthetic", "trainer.epochs=1", "trainer.batch_size=16",
          "dataset.synthetic.n_train=160", "trainer.device=cpu", "trainer.progress=false", "benchmark=none",
          "trainer.dtype=float64", "trainer.sync_bn=true"]
RETRAIN = ["space=darts", "genotype=DARTS_V2", "dataset=synthetic", "dataset.synthetic.image_size=32",
           "dataset.synthetic.n_train=80", "retrain.C=4", "retrain.layers=3", "retrain.epochs=1",
           "retrain.batch_size=16", "retrain.drop_path=0", "trainer.device=cpu", "trainer.progress=false",
           "trainer.dtype=float64", "trainer.sync_bn=true"]


def run(cmd, *args, ranks=2, timeout=600):
    prefix = TORCHRUN if ranks == 2 else NASRUN
    return subprocess.run(prefix + [cmd, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def floats(state, path=""):
    """``{path: tensor}`` of every tensor in a nested checkpoint state."""
    if isinstance(state, torch.Tensor):
        return {path: state}
    if isinstance(state, dict):
        return {k: v for key, sub in state.items() for k, v in floats(sub, f"{path}/{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, sub in enumerate(state) for k, v in floats(sub, f"{path}[{i}]").items()}
    return {}


def final_state(run_dir, parts):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["finished"]
    return floats({p: ckpt[p] for p in parts}), ckpt["history"]


def assert_same_run(one, two, parts, tol):
    (a, ha), (b, hb) = final_state(one, parts), final_state(two, parts)
    assert a.keys() == b.keys()
    assert any("momentum_buffer" in k for k in a) and any("/alphas/" in k for k in a) == ("method" in parts)
    worst = max(((x.double() - y.double()).abs().max().item() if x.numel() else 0.0, k) for k, (x, y) in
                ((k, (a[k], b[k])) for k in a))
    assert worst[0] <= tol, worst
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb):
        for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "test_loss", "test_acc", "monitor_acc"):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], abs=1e-9), (ra["epoch"], key)


# --- the equality gates (float64, gloo, 2 ranks) -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["darts", *(pytest.param(m, marks=pytest.mark.slow) for m in
                                              ("darts_2nd", "gdas", "pc_darts", "sgas", "rsps", "drnas", "gaea",
                                               "snas", "sdarts_rs", "sdarts_adv", "tse_darts", "amended_darts",
                                               "amended_darts_exact", "sp_darts"))])
def test_two_ranks_search_like_one_process(tmp_path, method):
    """5 steps (80 search-train images, global batch 16) of weights and α: 2 ranks × 8 images = 1 process × 16 (GDAS's
    and SNAS's Gumbel draws, RSPS's paths, DrNAS's Dirichlet samples and SDARTS's δ the same on both ranks; SDARTS-ADV's
    attack ascends the global batch's loss)."""
    extra = {"pc_darts": ["method.arch_start_epoch=0"], "amended_darts_exact": ["method.exact=true"],
             "tse_darts": ["method.inner_steps=2"], "sp_darts": ["method.warmup_epochs=0"]}.get(method, [])
    args = [*SEARCH, f"method={method.replace('_exact', '')}", *extra]
    one = run("search", *args, f"hydra.run.dir={tmp_path / 'one'}", ranks=1)
    assert one.returncode == 0, one.stderr
    two = run("search", *args, f"hydra.run.dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two", ("supernet", "method"), 1e-10)
    assert (tmp_path / "one" / "genotype.json").read_text() == (tmp_path / "two" / "genotype.json").read_text()
    assert two.stdout.count("run directory:") == 1  # rank 0 alone reports


def test_two_ranks_retrain_like_one_process(tmp_path):
    """DARTS-protocol retraining (auxiliary head, cutout, clipping): 5 steps of 16 images, 2 ranks × 8."""
    one = run("eval", *RETRAIN, f"hydra.run.dir={tmp_path / 'one'}", ranks=1)
    assert one.returncode == 0, one.stderr
    two = run("eval", *RETRAIN, f"hydra.run.dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two", ("retrainer",), 1e-10)


@pytest.mark.slow
def test_two_rank_run_killed_mid_epoch_resumes_bit_identically(tmp_path):
    """SIGTERM to torchrun in the second epoch: every rank stops at the same step, rank 0 writes the checkpoint, and
    the rerun ends exactly where an uninterrupted 2-rank run ends."""
    args = [*SEARCH, "trainer.epochs=3", "trainer.batch_size=8", "dataset.synthetic.n_train=640"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run("search", *args, f"hydra.run.dir={straight}").returncode == 0
    proc = subprocess.Popen(TORCHRUN + ["search", *args, f"hydra.run.dir={killed}"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    ckpt = torch.load(killed / "checkpoint.pt", weights_only=False)
    assert not ckpt["finished"] and ckpt["step"] > 0, "the kill did not land mid-epoch"
    assert err.count("nasrun: received SIGTERM") == 1, err
    again = run("search", *args, f"hydra.run.dir={killed}")
    assert again.returncode == 0, again.stderr
    assert_same_run(straight, killed, ("supernet", "method"), 0.0)


@pytest.mark.parametrize("cmd, args, needle", [
    ("search", [*SEARCH, "trainer.batch_size=15"], "trainer.batch_size=15 is the global batch"),
    ("search", [*SEARCH, "trainer.cuda_graphs=emulate"], "trainer.cuda_graphs=emulate does not yet work with several"),
    ("eval", ["genotype=|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
              "trainer.device=cpu"], "mode=benchmark runs in one process"),
])
def test_what_does_not_run_distributed_is_refused_in_one_line(tmp_path, cmd, args, needle):
    proc = run(cmd, *args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("nasrun: error: ")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr  # one line, from rank 0
    assert "Traceback" not in proc.stderr.split("nasrun: error")[0]


# --- the parts, in one process ------------------------------------------------------------------------------------------

@pytest.fixture
def world():
    """Pretend to be a rank of a world (no collectives are called by the parts under test)."""
    saved = WORLD.rank, WORLD.size, WORLD.local_rank
    yield WORLD
    WORLD.rank, WORLD.size, WORLD.local_rank = saved


def test_a_method_not_made_for_several_processes_is_refused(world):
    """Every shipped method runs distributed; a new one (a class that does not say ``distributed = True`` in its own
    body, e.g. a subclass that changes how gradients are computed) is refused until it does."""
    from nasrun.distributed import check_world
    from nasrun.errors import UserError
    from nasrun.methods.darts import Darts

    class NewMethod(Darts):
        """A DARTS subclass that has not declared itself ready for several processes."""

    method = NewMethod.__new__(NewMethod)
    check_world(method, "method", "method=new")  # one process: anything goes
    world.size = 2
    with pytest.raises(UserError, match="method=new does not yet run on several processes"):
        check_world(method, "method", "method=new")
    check_world(Darts.__new__(Darts), "method", "method=darts")


def test_env_world_reads_torchrun_and_slurm_steps():
    assert distributed.env_world({}) is None
    assert distributed.env_world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert distributed.env_world({"RANK": "0", "WORLD_SIZE": "1"}) is None
    step = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    assert distributed.env_world(step) == (5, 8, 1)
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}  # sbatch's shell: not a rank
    assert distributed.env_world(batch_script) is None


def test_rank_shards_partition_each_global_step(world):
    """Each rank's rows of a step (indices and their crop/flip/cutout parameters) are a slice of the global step's;
    together they are the step, less the last rows of a last batch the world size does not divide."""
    from nasrun.data import Augment, SearchStream

    aug = Augment([0.5] * 3, [0.25] * 3, crop_pad=2, flip=True, cutout=3)
    x, y = torch.randint(0, 255, (70, 3, 8, 8), dtype=torch.uint8), torch.arange(70) % 4
    args = (x, y, torch.arange(35), torch.arange(35, 70), 12, aug, "nb201", 3, torch.device("cpu"))
    whole = SearchStream(*args)
    whole.start_epoch(1)
    for size in (2, 3):
        world.size = size
        parts = []
        for rank in range(size):
            world.rank = rank
            s = SearchStream(*args)
            s.start_epoch(1)
            parts.append(s.tables)
        world.rank, world.size = 0, 1
        for step, full in enumerate(whole.tables):
            n = len(full["t"]) // size * size  # 12, 12 and the last batch's 11 → 10 (2 ranks) or 9 (3 ranks)
            assert torch.equal(torch.cat([p[step]["t"] for p in parts]), full["t"][:n])
            assert torch.equal(torch.cat([p[step]["v"] for p in parts]), full["v"][:n])
            for key, value in full["pt"].items():
                assert torch.equal(torch.cat([p[step]["pt"][key] for p in parts]), value[:n])


def test_a_global_batch_the_ranks_cannot_share_is_refused(world):
    from nasrun.data import Augment, SearchStream
    from nasrun.errors import UserError

    world.size = 4
    with pytest.raises(UserError, match="trainer.batch_size=10 is the global batch and 4 processes"):
        SearchStream(torch.zeros(40, 3, 8, 8, dtype=torch.uint8), torch.zeros(40, dtype=torch.long), torch.arange(20),
                     torch.arange(20, 40), 10, Augment([0.5] * 3, [0.25] * 3), "darts", 0, torch.device("cpu"))


def _sync_bn_worker(rank, init_file, out):
    import torch.distributed as dist
    import torch.nn.functional as F

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    WORLD.rank, WORLD.size, WORLD.sync_bn = rank, 2, True
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64) * 2 + 1
        w, b = torch.rand(3, generator=g, dtype=torch.float64) + 0.5, torch.randn(3, generator=g, dtype=torch.float64)
        up = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)  # ∂L/∂y of the whole batch
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        xs, ws, bs = (t.clone().requires_grad_() for t in (x[rank * 4:(rank + 1) * 4], w, b))
        y = distributed.batch_norm(xs, rm, rv, ws, bs, True, 0.1, 1e-5)
        (y * up[rank * 4:(rank + 1) * 4]).sum().backward()
        gw, gb = distributed.average([ws.grad * 2, bs.grad * 2])  # each rank's share is half the batch's loss
        # one process, the whole batch
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
        rm1, rv1 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        yr = F.batch_norm(xr, rm1, rv1, wr, br, True, 0.1, 1e-5)
        (yr * up).sum().backward()
        errs = [(y - yr[rank * 4:(rank + 1) * 4]).abs().max(), (xs.grad - xr.grad[rank * 4:(rank + 1) * 4]).abs().max(),
                (gw - wr.grad).abs().max(), (gb - br.grad).abs().max(), (rm - rm1).abs().max(), (rv - rv1).abs().max()]
        torch.save(torch.stack(errs), f"{out}.{rank}")
    finally:
        WORLD.rank, WORLD.size, WORLD.sync_bn = 0, 1, False
        dist.destroy_process_group()


def test_synced_batch_norm_is_the_global_batch_norm(tmp_path):
    """Two gloo ranks with half a batch each: output, input gradient, affine gradients and running statistics equal
    ``F.batch_norm`` of one process on the whole batch (float64)."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_bn_worker, args=(str(tmp_path / "init"), str(tmp_path / "errs")), nprocs=2)
    for rank in range(2):
        assert torch.load(tmp_path / f"errs.{rank}").max() < 1e-12


def test_one_process_is_untouched(world):
    """Without a world the collectives are the identity: no copies, no process group."""
    ts = [torch.randn(3), torch.randn(2, 2)]
    assert distributed.average(ts) == ts and distributed.shard(ts[0]) is ts[0]
    assert distributed.main_only(lambda: 7) == 7 and distributed.agree(False) is False
    assert os.environ.get("WORLD_SIZE") is None


# --- ImageNet: the folder loader and the protocol -----------------------------------------------------------------------

def write_image_folders(root, classes=3, train=6, val=2, seed=0):
    """``root/imagenet/{train,val}/<class>/*.JPEG``: small random JPEGs of assorted sizes (the ImageFolder layout)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / "imagenet" / split / f"n0{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = (rng.random((36 + 3 * i, 44 + c, 3)) * 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", format="JPEG")
    return root


def folder_stream(root, batch, workers=0, seed=1):
    from nasrun.imagenet import FolderData, FolderStream, transforms

    data = FolderData("imagenet", root)
    train_tf, _ = transforms(24, 28, True)
    return FolderStream(data, batch, seed, torch.device("cpu"), workers, train_tf)


def test_imagenet_stream_is_a_function_of_seed_and_epoch(tmp_path, world):
    """The same batches whatever the worker count, after a resume mid-epoch, and split over ranks: each image's
    crop, flip and jitter follow its own seed, drawn with the order at the epoch's start."""
    root = write_image_folders(tmp_path)
    plain = folder_stream(root, 6)
    plain.start_epoch(2)
    whole = [plain.batch(s)[0] for s in range(plain.steps)]
    assert plain.steps == 3 and all(x.shape == (6, 3, 24, 24) for x, _ in whole)
    assert sorted(torch.cat([y for _, y in whole]).tolist()) == [0] * 6 + [1] * 6 + [2] * 6  # each image once
    workers = folder_stream(root, 6, workers=2)
    workers.start_epoch(2)
    assert all(torch.equal(workers.batch(s)[0][0], whole[s][0]) for s in range(3))
    resumed = folder_stream(root, 6)
    resumed.start_epoch(2)
    assert torch.equal(resumed.batch(2)[0][0], whole[2][0])  # a resume after step 2 starts there
    other = folder_stream(root, 6)
    other.start_epoch(3)
    assert not torch.equal(other.batch(0)[0][0], whole[0][0])
    world.size = 2
    for rank in range(2):
        world.rank = rank
        shard = folder_stream(root, 6)
        shard.start_epoch(2)
        x, y = shard.batch(1)[0]
        assert torch.equal(x, whole[1][0][3 * rank:3 * rank + 3]) and torch.equal(y, whole[1][1][3 * rank:3 * rank + 3])


def test_imagenet_layout_errors_name_the_folders(tmp_path):
    from nasrun.errors import UserError
    from nasrun.imagenet import FolderData

    with pytest.raises(UserError, match=r"put the training images in .*imagenet/train/<class>/"):
        FolderData("imagenet", tmp_path)
    write_image_folders(tmp_path, val=0)
    with pytest.raises(UserError, match=r"val holds no images"):
        FolderData("imagenet", tmp_path)


def test_imagenet_retraining_runs_from_the_folders(tmp_path):
    """``nasrun eval dataset=imagenet``: the mobile network (stride-8 stems) trains on the streamed images and is
    tested on the val folders; a search on ImageNet is refused in one line."""
    import json

    root = write_image_folders(tmp_path / "data")
    args = ["space=darts", "genotype=DARTS_V2", "dataset=imagenet", f"dataset.root={root}", "dataset.crop=32",
            "dataset.resize=36", "dataset.workers=2", "retrain=imagenet_pcdarts", "retrain.C=4", "retrain.layers=3",
            "retrain.epochs=6", "retrain.warmup_epochs=2", "retrain.batch_size=6", "retrain.auxiliary_weight=0",
            "trainer.device=cpu", "trainer.progress=false"]
    proc = run("eval", *args, f"hydra.run.dir={tmp_path / 'run'}", ranks=1)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "imagenet" and summary["epochs"] == 6 and 0 <= summary["test_acc"] <= 100
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([reference_pcdarts_lr(e, epochs=6, warmup=2) for e in range(6)], abs=1e-15)
    bad = run("search", "dataset=imagenet", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 's'}", ranks=1)
    assert bad.returncode == 2 and "dataset=imagenet is for retraining" in bad.stderr


def reference_pcdarts_lr(epoch, epochs=250, lr=0.5, batch=1024, warmup=5):
    """PC-DARTS ``train_imagenet.py`` restated: ``adjust_lr`` then the warm-up of a batch over 256 (5 epochs there)."""
    if epochs - epoch > 5:
        current = lr * (epochs - 5 - epoch) / (epochs - 5)
    else:
        current = lr * (epochs - epoch) / ((epochs - 5) * 5)
    return current * (epoch + 1) / warmup if epoch < warmup and batch > 256 else current


def test_imagenet_pcdarts_protocol_follows_its_reference():
    from nasrun.retrain import Protocol

    from .conftest import make_cfg

    p = Protocol(**make_cfg(["space=darts", "genotype=DARTS_V2", "retrain=imagenet_pcdarts"], "eval", tiny=False).retrain)
    assert (p.C, p.layers, p.batch_size, p.epochs, p.label_smoothing, p.weight_decay) == (48, 14, 1024, 250, 0.1, 3e-5)
    assert [p.lr_at(e) for e in range(250)] == pytest.approx([reference_pcdarts_lr(e) for e in range(250)], abs=1e-15)
    scaled = Protocol(**{**make_cfg(["space=darts", "genotype=DARTS_V2", "retrain=imagenet_pcdarts",
                                     "retrain.batch_size=256", "retrain.lr_batch=1024"], "eval", tiny=False).retrain})
    assert scaled.lr_at(10) == pytest.approx(reference_pcdarts_lr(10) / 4)  # linear scaling to a quarter of the batch
