"""Perturbation-based selection (DARTS-PT, Wang et al. ICLR'21; methods.md §5.2; reference ruocwang/darts-pt).

After the search, fine-tune the supernet with a fresh SGD while projecting: at each scheduled epoch pick a
random un-projected edge per cell type, mask each candidate op in turn (its weight set to 0, the others
unchanged) and evaluate the supernet on the whole valid split with train-mode BN; the op whose removal
hurts most (lowest accuracy, or highest loss) becomes the edge's fixed one-hot. As in darts-pt, each
evaluation walks the valid split in a new random order with the train augmentation (its ``valid_queue``),
and the tuning steps walk a permutation of the train split, each with a fresh random valid batch. In the DARTS space the
last projections are topological: for a random node with more than two inputs, repeatedly drop the input
edge whose removal hurts least until two remain. The genotype is then read from the projected weights.
"""

import copy
import math

import torch

from ..engine import StopFlag, console, cpu_copy, rng_state, set_rng_state, stop_for_signal
from ..errors import UserError


def pt_schedule(n_op, n_topo, proj_intv, style):
    """``[(tune_epoch, kind)]`` of the reference schedules.

    ``nb201``: tune proj_intv·(n_op−1) epochs, project at multiples of proj_intv and at the last epoch.
    ``darts``: tune proj_intv·(n_op+n_topo−1)+1 epochs, project at multiples of proj_intv; op projections
    first, then topology.
    """
    if style == "nb201":
        tune = proj_intv * (n_op - 1)
        epochs = [e for e in range(tune) if e % proj_intv == 0 or e == tune - 1]
    else:
        tune = proj_intv * (n_op + n_topo - 1) + 1
        epochs = [e for e in range(tune) if e % proj_intv == 0]
    kinds = ["op"] * n_op + ["topology"] * n_topo
    return tune, list(zip(epochs, kinds))


class PerturbationSelector:
    """DARTS-PT projection.

    Args:
        name: selector name.
        criterion: ``acc`` (choose argmin accuracy without the op) or ``loss`` (argmax loss).
        proj_intv: epochs of fine-tuning between projections (5).
        tune_lr: fine-tuning SGD learning rate (darts-pt: the search lr / 10 = 0.0025).
        tune_lr_min: cosine floor over the tuning epochs (DARTS space 0.001; NB201 uses a constant: = tune_lr).
        momentum, weight_decay: fine-tuning SGD settings.
        max_valid_batches: cap on the valid batches per evaluation (null: the whole valid split).
        augment_valid: score on the augmented valid split in a random order (darts-pt); false: the clean
            images in index order (a deterministic score).
    """

    needs_tensor_weights = True  # masks entries of the method's mixing weights

    def __init__(self, name="pt", criterion="acc", proj_intv=5, tune_lr=0.0025, tune_lr_min=0.0025, momentum=0.9,
                 weight_decay=3e-4, max_valid_batches=None, augment_valid=True):
        if criterion not in ("acc", "loss"):
            raise UserError(f"selector.criterion={criterion!r}: choose acc or loss")
        self.name, self.criterion, self.proj_intv = name, criterion, proj_intv
        self.tune_lr, self.tune_lr_min, self.momentum, self.weight_decay = tune_lr, tune_lr_min, momentum, weight_decay
        self.max_valid_batches, self.augment_valid = max_valid_batches, augment_valid
        self.decisions = []
        self._gen = torch.Generator()

    def check_setup(self, space, **_):
        if not hasattr(space, "edge_targets"):
            raise UserError(f"selector={self.name} projects one op per edge; space {space.name} has no such edges "
                            "(use nb201 or a DARTS-family space)")

    # --- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, method, stream, weights):
        """Accuracy (%) and mean loss of the supernet with ``weights`` on the valid split (train-mode BN).

        Sums stay on the device (one host read per evaluation); each batch runs from a CUDA graph when the
        method's graphs are on."""
        method.supernet.train()
        correct = torch.zeros((), device=stream.device, dtype=torch.float64)
        loss = torch.zeros((), device=stream.device, dtype=torch.float64)
        n, score = 0, _score(method)
        for x, y in stream.valid_batches(self._gen if self.augment_valid else None, self.max_valid_batches):
            batch_loss, batch_correct = method.graphs.run("pt_score", score, lambda: None, x, y, weights)
            correct += batch_correct
            loss += batch_loss.double() * len(y)
            n += len(y)
        return 100.0 * correct.item() / n, loss.item() / n

    def _worse(self, result):
        """Key that is larger for a bigger drop in quality."""
        acc, loss = result
        return -acc if self.criterion == "acc" else loss

    # --- projection -------------------------------------------------------------------------------------------
    def select(self, space, method, history, stream, bench=None, bench_dataset="cifar10", progress=None, **_state):
        """Fine-tune and project; with ``progress`` (the search loop's :class:`~nasrun.search.SelectionProgress`)
        the state is checkpointed after every projection and tuning epoch, and a SIGTERM/SIGUSR1/SIGUSR2 writes it
        at the next step or projection boundary and exits 3; the next run resumes there bit-identically."""
        keys = sorted(space.alpha_shapes())
        edges = {k: space.alpha_shapes()[k][0] for k in keys}
        fixed = {k: {} for k in keys}          # edge -> op index (one-hot)
        removed = {k: set() for k in keys}     # edges dropped by topology projection
        base = method.edge_weights

        tables = {}  # projection state → (keep [E, 1], one-hot [E, K]) on the device

        def projected(alphas=None):
            """The mixing weights with projected edges one-hot and removed edges zero: w·keep + one-hot, so a captured
            step reads no host data (the tables are made once per projection state, by an eager call: the first
            call after a projection is a graph warm-up)."""
            out = {}
            for k, w in base(alphas).items():
                state = (k, tuple(sorted(fixed[k].items())), tuple(sorted(removed[k])), w.dtype)
                if state not in tables:
                    keep, onehot = torch.ones(w.shape[0], 1, dtype=w.dtype), torch.zeros(w.shape, dtype=w.dtype)
                    for e, o in fixed[k].items():
                        keep[e], onehot[e, o] = 0.0, 1.0
                    for e in removed[k]:
                        keep[e], onehot[e] = 0.0, 0.0
                    tables[state] = keep.to(w.device), onehot.to(w.device)
                keep, onehot = tables[state]
                out[k] = w * keep + onehot
            return out

        def annotate(when, step):
            """Attach the partially projected genotype (and its benchmark result) to the new decisions, and send it
            to the run's trackers at ``step`` (the search's epochs, then the tuning epochs)."""
            g = space.derive({k: v.detach() for k, v in projected().items()})
            new = [d for d in self.decisions if "genotype" not in d]
            for d in new:
                d["genotype"] = space.format_genotype(g)
                d["benchmark"] = bench.query(g, bench_dataset) if bench is not None else None
                console.print(f"pt: {when}: {d['kind']} projection → {d['genotype']}")
            if new and progress is not None and hasattr(progress, "report"):
                progress.report({"epoch": step, "pt_projections": len(self.decisions), "genotype": new[-1]["genotype"],
                                 "benchmark": new[-1]["benchmark"],
                                 "alpha": {k: v.detach().tolist() for k, v in projected().items()}})

        method.edge_weights = projected
        topo_nodes = self._topology_nodes(space)
        n_op, n_topo = edges[keys[0]], len(topo_nodes)
        style = "nb201" if not topo_nodes else "darts"
        tune_epochs, events = pt_schedule(n_op, n_topo, self.proj_intv, style)
        method.w_opt = torch.optim.SGD(method.supernet.parameters(), lr=self.tune_lr, momentum=self.momentum,
                                       weight_decay=self.weight_decay)
        gen = torch.Generator()
        saved = progress.saved if progress is not None else None
        if saved is None:
            gen.manual_seed(int(torch.randint(0, 2**31 - 1, ())))
            self._gen.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=gen)))
            position = (0, 0, 0)  # (tuning epoch, projections done at it, tuning steps done in it)
        else:
            position = self._load(saved, method, fixed, removed, gen)
            console.print(f"pt: resuming in tuning epoch {position[0] + 1} ({len(self.decisions)} projections done)")
        tune = copy.copy(stream)  # darts-pt tunes on its train_queue with a fresh random valid batch per step
        tune.pairing, tune.train_draw = "darts", "epoch"
        schedule = dict(events)
        first_epoch = len(history)

        def save(pos, stop=None):
            if progress is not None:
                progress.save(self._state(pos, method, fixed, removed, gen))
            if stop is not None and stop.signal:
                where = (f"DARTS-PT's progress (tuning epoch {pos[0] + 1}) written to {progress.where}"
                         if progress is not None else "nasrun select keeps no partial selection")
                stop_for_signal(stop, where)

        e0, k0, s0 = position
        try:
            with StopFlag() as stop:
                for e in range(e0, tune_epochs):
                    lr = self.tune_lr_min + (self.tune_lr - self.tune_lr_min) * (1 + math.cos(math.pi * e / tune_epochs)) / 2
                    for g in method.w_opt.param_groups:
                        g["lr"] = lr
                    if e in schedule:
                        for i, k in enumerate(keys):
                            if e == e0 and i < k0:
                                continue
                            if schedule[e] == "op":
                                self._project_op(k, method, stream, fixed, removed, edges, gen, projected)
                            else:
                                self._project_topology(k, method, stream, fixed, removed, space, topo_nodes, gen,
                                                       projected)
                            if i == len(keys) - 1:
                                annotate(f"tune epoch {e + 1}", first_epoch + e)
                                method.reset_graphs()  # the projected weights changed
                            save((e, i + 1, 0), stop)
                    if e == tune_epochs - 1:
                        break
                    tune.start_epoch(first_epoch + e)
                    for step in range(s0 if e == e0 else 0, tune.steps):
                        method.step(*tune.batch(step))
                        if stop.signal:
                            save((e, len(keys), step + 1), stop)
                    save((e + 1, 0, 0), stop)
            # the NB201 formula leaves one projection out when proj_intv < 2: finish what remains
            for k in keys:
                while any(x not in fixed[k] and x not in removed[k] for x in range(edges[k])):
                    self._project_op(k, method, stream, fixed, removed, edges, gen, projected)
                while any(len([x for x in es if x not in removed[k]]) > 2 for es in topo_nodes.values()):
                    self._project_topology(k, method, stream, fixed, removed, space, topo_nodes, gen, projected)
            annotate("final", first_epoch + tune_epochs)
        finally:
            method.edge_weights = base
        final = {k: v.detach() for k, v in projected().items()}
        return [(self.name, space.derive(final))]

    def _state(self, position, method, fixed, removed, gen):
        """Everything a resume needs: where, the decisions so far, both generators, the tuned supernet and the
        method (α, the tuning SGD), and the global RNG."""
        return {"position": position, "fixed": copy.deepcopy(fixed), "removed": {k: sorted(v) for k, v in removed.items()},
                "decisions": copy.deepcopy(self.decisions), "gen": gen.get_state(), "eval_gen": self._gen.get_state(),
                "supernet": cpu_copy(method.supernet.state_dict()), "method": cpu_copy(method.state_dict()),
                "rng": rng_state()}

    def _load(self, saved, method, fixed, removed, gen):
        for k in fixed:
            fixed[k].update(saved["fixed"][k])
            removed[k].update(saved["removed"][k])
        self.decisions = copy.deepcopy(saved["decisions"])
        gen.set_state(saved["gen"])
        self._gen.set_state(saved["eval_gen"])
        method.supernet.load_state_dict(saved["supernet"])
        method.load_state_dict(saved["method"])  # after the tuning SGD exists: its state is in there
        set_rng_state(saved["rng"])
        return tuple(saved["position"])

    def _project_op(self, key, method, stream, fixed, removed, edges, gen, projected):
        remaining = [e for e in range(edges[key]) if e not in fixed[key] and e not in removed[key]]
        if not remaining:
            return
        e = remaining[int(torch.randint(len(remaining), (1,), generator=gen))]
        ops = method.space.op_names(key)[e]
        mask = method.op_mask  # a progressive search's pruned ops are no candidates
        candidates = [o for o in range(len(ops)) if mask is None or bool(mask[key][e, o])]
        scores = {}
        for o in candidates:
            w = {k: v.detach().clone() for k, v in projected().items()}
            w[key][e, o] = 0.0
            scores[ops[o]] = self.evaluate(method, stream, w)
        best = max(candidates, key=lambda o: (self._worse(scores[ops[o]]), -o))
        fixed[key][e] = best
        self.decisions.append({"kind": "op", "cell": key, "edge": e, "chosen": ops[best],
                               "scores": {k: {"acc": a, "loss": l} for k, (a, l) in scores.items()}})

    def _project_topology(self, key, method, stream, fixed, removed, space, topo_nodes, gen, projected):
        nodes = [n for n in topo_nodes if len([e for e in topo_nodes[n] if e not in removed[key]]) > 2]
        if not nodes:
            return
        node = nodes[int(torch.randint(len(nodes), (1,), generator=gen))]
        dropped = []
        while len(live := [e for e in topo_nodes[node] if e not in removed[key]]) > 2:
            results = {}
            for e in live:
                w = {k: v.detach().clone() for k, v in projected().items()}
                w[key][e] = 0.0
                results[e] = self.evaluate(method, stream, w)
            drop = min(live, key=lambda e: (self._worse(results[e]), e))  # removing it hurts least
            removed[key].add(drop)
            dropped.append(drop)
        self.decisions.append({"kind": "topology", "cell": key, "node": node, "dropped": dropped,
                               "kept": [e for e in topo_nodes[node] if e not in removed[key]]})

    @staticmethod
    def _topology_nodes(space):
        """``{node: [edge indices]}`` for nodes with more than two candidate inputs (DARTS full topology)."""
        edges = getattr(space, "edges", None)
        if not edges or not isinstance(edges[0], tuple):
            return {}
        nodes = {}
        for e, (n, _) in enumerate(edges):
            nodes.setdefault(n, []).append(e)
        return {n: es for n, es in nodes.items() if len(es) > 2}


def _score(method):
    """Loss and correct count of one valid batch under given mixing weights (capturable)."""
    def score(x, y, weights):
        batch_loss, logits = method.loss(x, y, weights)
        return batch_loss.detach(), (logits.argmax(1) == y).sum()

    return score
