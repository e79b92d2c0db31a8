"""SP-DARTS (Zhang & Ding: sparse temperature, batch-mixed; methods.md §4.5).

Each step draws φ ~ Bernoulli(p_e) and runs both the w step and the α step with softmax(α/t),
t = t_sp if φ else t_sm (= ``sm_factor``·t_sp). p_e is 0 during warm-up, then grows linearly from p_low
to p_up; warm-up epochs use t = ``warmup_factor``·t_sp. Valid accuracy is also monitored at the
near-discrete temperature ``monitor_temperature`` (or ``monitor_factor``·t_sp). The S1-S4 code
(``SmoothDARTS/sota/cnnmul/train_search.py``) mixes the w step with softmax(softmax(α)/t) instead
(``w_double_softmax``).
"""

import torch
import torch.nn.functional as F

from ..distributed import WORLD, reduce_sums
from .darts import Darts


SHARD_STATS = ("mon_correct", "mon_n")  # counted on each rank's shard; the others are the same on every rank


class SpDarts(Darts):
    """SP-DARTS on top of DARTS (first order).

    Args:
        t_sp: sparse temperature.
        sm_factor: t_sm = sm_factor·t_sp (10 in the paper, 11 in the NB201 code after warm-up).
        warmup_factor: temperature factor of the warm-up epochs (both temperatures are warmup_factor·t_sp).
        warmup_epochs: i_wp.
        p_low, p_up: range of the Bernoulli mixing probability.
        schedule_offset: 0 = paper Eq. 20; 1 = the code, which is one epoch ahead.
        monitor_temperature: temperature of the monitoring accuracy (null disables it).
        monitor_factor: if set, monitor at ``monitor_factor``·t_sp instead (the DARTS-space and S1-S4 code's
            ``infer(..., temp/10)``: 0.1), so the monitor follows a t_sp sweep.
        late_epoch, late_t_sp: from ``late_epoch`` on, use ``late_t_sp`` and freeze p at its value of the
            epoch before (the repo's CIFAR-100 script: 45 and 6e-4, C keeps epoch 44's value; the paper is
            silent). null disables.
        w_double_softmax: the w step mixes with softmax(softmax(α)/t) (the S1-S4 code replaces α by
            softmax(α) for the w step, ``softmax_arch_parameters``); the α step keeps softmax(α/t).
        Other arguments: as :class:`~nasrun.methods.darts.Darts`.
    """

    distributed = True  # several processes: DARTS's steps; the temperature draw is the same on every rank

    def __init__(self, supernet, space, name="sp_darts", w_lr=0.05, w_lr_min=0.05, w_momentum=0.9, w_nesterov=True,
                 w_weight_decay=5e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=0.0,
                 arch_first=False, train_arch=True, t_sp=1.1e-3, sm_factor=10.0, warmup_factor=10.0, warmup_epochs=1,
                 p_low=0.0, p_up=1.0, schedule_offset=0, monitor_temperature=1e-4, monitor_factor=None, late_epoch=None,
                 late_t_sp=None, w_double_softmax=False, lr_offset=0, grad_clip_scope="weights"):
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, arch_first, False, 0.01, train_arch, lr_offset,
                         grad_clip_scope=grad_clip_scope)
        self.t_sp, self.sm_factor, self.warmup_factor, self.warmup_epochs = t_sp, sm_factor, warmup_factor, warmup_epochs
        self.p_low, self.p_up, self.schedule_offset = p_low, p_up, schedule_offset
        self.monitor_temperature, self.monitor_factor = monitor_temperature, monitor_factor
        self.w_double_softmax = w_double_softmax
        self.late_epoch, self.late_t_sp, self.base_t_sp = late_epoch, late_t_sp, t_sp
        self.temperature, self.p, self.warm = t_sp, 0.0, True
        # the temperature of the current step as a device scalar: a captured step reads it, the host sets it
        self._temperature = torch.tensor(t_sp, dtype=torch.float64, device=next(supernet.parameters()).device)
        self._epoch_stats = None

    def graph_tensors(self):
        return [*super().graph_tensors(), self._temperature, *(self._epoch_stats or {}).values()]

    def graph_key(self):
        return super().graph_key(), self.monitor()  # the monitor temperature is a Python number in the step

    def monitor(self):
        """The monitoring temperature (None: no monitor)."""
        return self.monitor_factor * self.t_sp if self.monitor_factor else self.monitor_temperature

    def mix_probability(self, epoch, epochs):
        """p_e (Eq. 20; ``schedule_offset=1`` reproduces the code's one-epoch lead), capped at p_up."""
        if self.late_epoch is not None and epoch >= self.late_epoch:
            epoch = self.late_epoch - 1  # frozen at the value of the epoch before the late switch
        if epoch < self.warmup_epochs:
            return 0.0
        frac = (epoch - self.warmup_epochs + self.schedule_offset) / max(epochs - self.warmup_epochs, 1)
        return min(self.p_low + (self.p_up - self.p_low) * frac, self.p_up)

    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        self.p, self.warm = self.mix_probability(epoch, epochs), epoch < self.warmup_epochs
        late = self.late_epoch is not None and epoch >= self.late_epoch
        self.t_sp = self.late_t_sp if late else self.base_t_sp
        if self._epoch_stats is None:
            device = self._temperature.device  # accumulate where the logits are: no host sync
            self._epoch_stats = {k: torch.zeros((), device=device) for k in ("sparse", "steps", "mon_correct", "mon_n")}
        if getattr(self, "_epoch_epoch", None) != epoch:
            self._epoch_epoch = epoch
            for v in self._epoch_stats.values():  # in place: a captured step keeps writing to these tensors
                v.zero_()

    def prepare_step(self):
        """φ ~ Bernoulli(p) from the CPU generator (as the reference's per-step draw), then the step's temperature."""
        if self.warm:
            self.temperature = self.warmup_factor * self.t_sp
        else:
            sparse = bool(torch.rand(()) < self.p)
            self.temperature = self.t_sp if sparse else self.sm_factor * self.t_sp
            self._epoch_stats["sparse"] += float(sparse)
        self._epoch_stats["steps"] += 1
        self._temperature.fill_(self.temperature)

    def device_step(self, train_batch, valid_batch):
        out = super().device_step(train_batch, valid_batch)
        monitor = self.monitor()
        if monitor and valid_batch is not None:
            with torch.no_grad():
                w = {k: F.softmax(a / monitor, dim=-1) for k, a in self.alphas.items()}
                _, logits = self.loss(*valid_batch, w)
                self._epoch_stats["mon_correct"] += (logits.argmax(1) == valid_batch[1]).sum()
                self._epoch_stats["mon_n"] += len(valid_batch[1])
        return out

    def edge_weights(self, alphas=None):
        alphas = self.alphas if alphas is None else alphas
        return {k: F.softmax(a / self._temperature, dim=-1) for k, a in alphas.items()}

    def weight_step_weights(self):
        if not self.w_double_softmax:
            return super().weight_step_weights()
        return {k: F.softmax(F.softmax(a, dim=-1) / self._temperature, dim=-1) for k, a in self.alphas.items()}

    def derive_weights(self):
        return {k: F.softmax(a.detach(), dim=-1) for k, a in self.alphas.items()}

    def epoch_metrics(self):
        s = self._epoch_stats or {"steps": 0, "mon_n": 0}  # before the first epoch: no statistics yet
        return {"mix_probability": self.p, "sparse_fraction": (s["sparse"] / s["steps"]).item() if s["steps"] else None,
                "monitor_acc": (100 * s["mon_correct"] / s["mon_n"]).item() if s["mon_n"] else None,
                "warmup": self.warm}

    def reduce_shards(self):
        """Several ranks: the monitor's counts over all ranks' shards (the temperature draws are every rank's)."""
        if self._epoch_stats is not None:
            reduce_sums({k: self._epoch_stats[k] for k in SHARD_STATS})

    def state_dict(self):
        return {**super().state_dict(), "epoch_stats": self._epoch_stats, "epoch": getattr(self, "_epoch_epoch", None)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._epoch_epoch, stats = state["epoch"], state["epoch_stats"]
        if stats is None:
            self._epoch_stats = None
            return
        if self._epoch_stats is None:  # on the method's device: the steps add device sums to them
            self._epoch_stats = {k: torch.zeros((), device=self._temperature.device) for k in stats}
        for k, v in stats.items():  # in place: a captured step writes to these tensors
            self._epoch_stats[k].copy_(v)
            if k in SHARD_STATS and not WORLD.main:  # rank 0's checkpoint holds all ranks' counts
                self._epoch_stats[k].zero_()
