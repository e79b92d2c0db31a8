"""Retraining a genotype from scratch (methods.md §7; quark0 ``train.py`` / ``train_imagenet.py``).

Protocol keys come from ``conf/retrain/<preset>.yaml``: width and depth, SGD with a per-epoch cosine
(or exponential) schedule, auxiliary head weight, linearly increasing drop-path, cutout, gradient clip.
The loop is :class:`~nasrun.engine.EpochLoop`, so a retrain checkpoints and resumes like a search.
"""

import contextlib
import functools
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .data import NORMALISATION, Augment, SearchStream, check_cutout, data_root, load_dataset
from .distributed import WORLD, average_grads, convert_sync_bn
from .engine import EpochLoop, console, seed_everything
from .errors import UserError
from .graphs import GraphSet, GraphState, graphs_wanted, optimizer_key
from .utils import count_flops, count_parameters, full_precision


LINEAR_TAIL = 5  # PC-DARTS's adjust_lr: "smaller slope for the last 5 epochs"


class Protocol:
    """Retraining hyper-parameters (one YAML per protocol under ``conf/retrain``).

    Args:
        name: preset name.
        C, layers: evaluation network width and depth.
        imagenet: use the ImageNet mobile network (stems of stride 8) instead of NetworkCIFAR.
        auxiliary_weight: weight of the auxiliary head's loss (0 disables the head).
        drop_path: final drop-path probability; epoch e uses drop_path·e/E.
        cutout: cutout side length (0 disables).
        epochs, batch_size: schedule length and batch.
        lr, lr_min: SGD learning rate and the cosine floor.
        schedule: ``cosine``, ``exponential`` (lr·gamma^e, quark0 ImageNet) or ``linear`` (PC-DARTS / P-DARTS
            ``train_imagenet.py``'s ``adjust_lr``: lr·(E − 5 − e)/(E − 5), then a gentler slope over the last 5 epochs,
            lr·(E − e)/(5(E − 5))).
        gamma: decay factor of the exponential schedule.
        lr_offset: quark0 steps its scheduler at the start of each epoch, so epoch e runs at lr(e+1).
        momentum, weight_decay, grad_clip, label_smoothing: optimisation settings.
        warmup_epochs: the first W epochs run at lr(e)·(e + 1)/W (PC-DARTS / P-DARTS / DrNAS ImageNet, batch > 256).
        lr_batch: linear scaling (Goyal et al. 2017): with a batch size other than ``lr_batch`` the rate is
            lr·batch_size/lr_batch (null: ``lr`` as given).
    """

    def __init__(self, name, C, layers, imagenet, auxiliary_weight, drop_path, cutout, epochs, batch_size, lr, lr_min,
                 schedule, gamma, lr_offset, momentum, weight_decay, grad_clip, label_smoothing, warmup_epochs=0,
                 lr_batch=None):
        if schedule not in ("cosine", "exponential", "linear"):
            raise UserError(f"retrain.schedule must be cosine, exponential or linear, not {schedule!r}")
        if schedule == "linear" and epochs <= LINEAR_TAIL:
            raise UserError(f"retrain.schedule=linear needs more than {LINEAR_TAIL} epochs (its last {LINEAR_TAIL} "
                            f"decay gently), not {epochs}")
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})
        if lr_batch:
            self.lr = lr * batch_size / lr_batch

    def idle_warning(self):
        """A warning when at least half the epochs would run at learning rate 0 (a short cosine to lr_min=0 with
        quark0's one-epoch lead: ``retrain.epochs=1`` learns nothing), else None."""
        idle = [e for e in range(self.epochs) if self.lr_at(e) <= 0]
        if not idle or 2 * len(idle) < self.epochs:
            return None
        return (f"warning: {len(idle)} of the {self.epochs} retrain epochs run at learning rate 0 (retrain.lr_offset="
                f"{self.lr_offset} runs epoch e at lr(e + {self.lr_offset}) of a cosine that ends at lr_min={self.lr_min:g}); "
                "use more epochs, retrain.lr_offset=0 or retrain.lr_min > 0")

    def lr_at(self, epoch):
        e, E = epoch + self.lr_offset, self.epochs
        if self.schedule == "exponential":
            lr = self.lr * self.gamma ** e
        elif self.schedule == "linear":
            tail = LINEAR_TAIL
            lr = self.lr * ((E - tail - e) / (E - tail) if E - e > tail else (E - e) / ((E - tail) * tail))
        else:
            lr = self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * e / E)) / 2
        if epoch < self.warmup_epochs:
            lr *= (epoch + 1) / self.warmup_epochs
        return lr


class Retrainer:
    """Network + SGD with the protocol's per-step logic; checkpointable like a search method."""

    def __init__(self, net, protocol, autocast, cuda_graphs=False, verify=True):
        self.net, self.p, self.autocast = net, protocol, autocast
        self.opt = torch.optim.SGD(net.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                                   weight_decay=protocol.weight_decay)
        self.graphs = GraphSet(cuda_graphs, lambda: GraphState([self.net], [self.opt]), verify)

    def graph_key(self):
        """Python values a captured step bakes in: the optimiser (learning rate of the epoch) and drop-path probability."""
        return optimizer_key([self.opt]), self.net.drop_path_prob

    def on_epoch_start(self, epoch):
        for g in self.opt.param_groups:
            g["lr"] = self.p.lr_at(epoch)
        self.net.drop_path_prob = self.p.drop_path * epoch / self.p.epochs
        self.net.train()

    def step(self, train, _valid=None):
        return self.graphs.run("retrain_step", self.device_step, self.graph_key, train)

    def device_step(self, train):
        """Forward, backward, clip and SGD step (capturable; drop-path draws on the device generator)."""
        x, y = train
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits, aux = self.net(x)
        loss = F.cross_entropy(full_precision(logits), y, label_smoothing=self.p.label_smoothing)
        total = loss
        if aux is not None and self.p.auxiliary_weight:
            total = loss + self.p.auxiliary_weight * F.cross_entropy(full_precision(aux), y,
                                                                     label_smoothing=self.p.label_smoothing)
        total.backward()
        average_grads(self.net.parameters())  # several processes: the global batch's gradient on every rank
        if self.p.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.p.grad_clip)
        self.opt.step()
        return {"train_loss": loss.detach(), "train_correct": (logits.argmax(1) == y).sum()}

    @torch.no_grad()
    def evaluate(self, x, y, augment, batch_size=256):
        """Loss, top-1 and top-5 accuracy (%) on a whole uint8 test set, normalised only."""
        return self.evaluate_batches((augment.normalise(x[i:i + batch_size]), y[i:i + batch_size])
                                     for i in range(0, len(x), batch_size))

    @torch.no_grad()
    def evaluate_batches(self, batches):
        """Loss, top-1 and top-5 accuracy (%) over ``(x, y)`` batches that are ready for the network (a folder
        dataset's); top-5 is the ImageNet tables' second column."""
        self.net.eval()
        loss = correct = correct5 = n = 0
        for x, y in batches:
            b_loss, b_correct, b_correct5 = self.graphs.run("retrain_eval", self._eval_batch, lambda: None, x, y)
            loss, correct, correct5, n = loss + b_loss, correct + b_correct, correct5 + b_correct5, n + len(y)
        self.net.train()
        return loss.item() / n, 100.0 * correct.item() / n, 100.0 * correct5.item() / n

    def _eval_batch(self, x, y):
        with self.autocast():
            logits, _ = self.net(x)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        return (F.cross_entropy(full_precision(logits), y, reduction="sum").double(), (logits.argmax(1) == y).sum(),
                (top5 == y[:, None]).any(1).sum())

    def state_dict(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.graphs.reset()


def retrain_data(dataset, p, seed, device):
    """The dataset config's data for retraining: an in-memory dataset on the device (CIFAR, SVHN, ...), or ImageNet
    streamed from its folders by worker processes (:mod:`nasrun.imagenet`). Returns the training ``stream``,
    ``test_batches()`` (normalised ``(x, y)`` batches on the device), and the dataset's name, class count, image size,
    channels and split sizes."""
    d = dict(dataset)
    if d["name"] == "imagenet":
        from .imagenet import FolderData, FolderStream, eval_batches, transforms

        data = FolderData("imagenet", data_root(d["root"]))
        train_tf, test_tf = transforms(d["crop"], d["resize"], d["jitter"])
        stream = FolderStream(data, p.batch_size, seed, device, d["workers"], train_tf)
        return SimpleNamespace(name=data.name, num_classes=data.num_classes, size=d["crop"], channels=3, stream=stream,
                           n_train=len(data.train[0]), n_test=len(data.test[0]),
                           test_batches=lambda: eval_batches(data, test_tf, device, d["workers"]))
    data = load_dataset(d["name"], d["root"], d["download"], d.get("synthetic"))
    check_cutout("retrain.cutout", p.cutout, data.train_x.shape[-1])
    mean, std = d["mean"], d["std"]
    if mean is None or std is None:
        mean, std = NORMALISATION.get((data.name, "darts"), ([0.5] * 3, [0.25] * 3))
    augment = Augment(mean, std, crop_pad=d["crop_pad"], flip=d["flip"], cutout=p.cutout, cutout_prob=1.0)
    stream = SearchStream(data.train_x, data.train_y, torch.arange(len(data.train_x)), None, p.batch_size, augment,
                          "darts", seed, device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)

    def test_batches(batch_size=256):
        return ((augment.normalise(test_x[i:i + batch_size]), test_y[i:i + batch_size])
                for i in range(0, len(test_x), batch_size))

    return SimpleNamespace(name=data.name, num_classes=data.num_classes, size=data.train_x.shape[-1],
                       channels=data.train_x.shape[1], stream=stream,
                       n_train=len(data.train_x), n_test=len(data.test_x), test_batches=test_batches)


def run_retrain(cfg, run, state, space, genotype, device, trackers=None):
    """Retrain ``genotype`` on the full training set, evaluating on the test set every epoch."""
    p = Protocol(**cfg.retrain)
    warning = p.idle_warning()
    if warning:
        console.print(f"[yellow]{warning}[/yellow]")
    t = cfg.trainer
    seed_everything(cfg.seed)
    data = retrain_data(cfg.dataset, p, cfg.seed, device)
    net = space.build_network(genotype, data.num_classes, C=p.C, layers=p.layers, auxiliary=p.auxiliary_weight > 0,
                              imagenet=p.imagenet, in_channels=data.channels)
    params = count_parameters(net)
    flops = count_flops(net, (1, data.channels, data.size, data.size))
    net = net.to(device)
    layout = torch.channels_last if t.channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    autocast = (functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16) if t.amp and device.type == "cuda"
                else contextlib.nullcontext)
    if t.get("sync_bn"):
        convert_sync_bn(net)
    trainer = Retrainer(net, p, autocast, graphs_wanted(t.get("cuda_graphs", "auto"), device, WORLD.active),
                        verify=t.get("cuda_graphs_verify", True))
    loop = EpochLoop(run, {"retrainer": trainer}, data.stream, device, t.progress, layout)
    if state is not None:
        loop.resume(state)
    if trackers is not None:
        trackers.start(run, run.config, loop.epoch)
        loop.trackers = trackers
    console.print(f"retrain: {space.name} C={p.C} layers={p.layers} on {data.name} ({data.n_train} train, "
                  f"{data.n_test} test), {params / 1e6:.3f}M params, {p.epochs} epochs → {run.path}")

    def epoch_end(epoch, m, seconds):
        test_loss, test_acc, test_acc5 = trainer.evaluate_batches(data.test_batches())
        return {"epoch": epoch, "lr": trainer.opt.param_groups[0]["lr"], "drop_path_prob": net.drop_path_prob,
                "train_loss": m["train_loss"], "train_acc": m["train_acc"], "test_loss": test_loss, "test_acc": test_acc,
                "test_acc5": test_acc5,
                "seconds": round(seconds, 3), "images_per_s": round(m["train_n"] / seconds, 1) if seconds else None}

    def log(r, epochs):
        console.print(f"epoch {r['epoch'] + 1}/{epochs}  lr {r['lr']:.5f}  train {r['train_loss']:.3f} / "
                      f"{r['train_acc']:.2f}%  test {r['test_loss']:.3f} / {r['test_acc']:.2f}%  {r['seconds']:.1f}s")

    loop.fit(p.epochs, trainer.step, trainer.on_epoch_start, epoch_end, log)
    final = loop.history[-1]
    summary = {"genotype": space.format_genotype(genotype), "space": space.name, "mode": "retrain", "protocol": p.name,
               "dataset": data.name, "seed": cfg.seed, "epochs": p.epochs, "test_acc": final["test_acc"],
               "test_error": 100.0 - final["test_acc"], "top5_error": 100.0 - final["test_acc5"],
               "params": params, "params_m": params / 1e6,
               "flops_m": flops / 1e6, "train_seconds": round(loop.elapsed, 2),
               "overhead_seconds": round(loop.overhead, 2), "run_dir": str(run.path)}
    run.write("summary.json", summary)
    loop.checkpoint(finished=True, summary=summary)
    if trackers is not None:
        trackers.finish([run.path / "summary.json"])
    return summary
