"""CUDA checks (marker ``gpu``; skipped without a GPU): the same loop and maths on the device."""

import json

import pytest
import torch

from nasrun.data import Augment
from nasrun.search import run_search

from .conftest import make_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("method", ["darts", "darts_2nd"])
def test_search_on_cuda_with_bf16(tmp_path, method):
    cfg = make_cfg([f"method={method}", "trainer.device=cuda", "trainer.amp=true", "trainer.channels_last=true",
                    "dataset.synthetic.image_size=32", "dataset.synthetic.n_train=512", "space.C=8", "space.N=2"])
    summary = run_search(cfg, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_loss"] == r["train_loss"] for r in lines) and summary["peak_memory_mb"] > 0


def test_augment_on_cuda_equals_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    aug = Augment([0.5] * 3, [0.25] * 3, crop_pad=4, flip=True, cutout=16, cutout_prob=0.5)
    params = aug.draw(16, 32, g)
    assert torch.allclose(aug(x, params), aug(x.cuda(), params).cpu(), atol=1e-5)


# gdas is eager by design (it reads its sampled ops on the host); drnas draws its Dirichlet sample inside the captured
# step (the CUDA generator's graph-safe philox offsets: replays must not repeat the draws)
GRAPH_METHODS = ["darts", "darts_2nd", "tse_darts", "amended_darts", "sp_darts", "ex_darts", "fixed_alpha", "sdarts_rs",
                 "sdarts_adv", "rsps", "pc_darts", "sgas", "snas", "pdarts", "gaea", "drnas", "darts+stages",
                 "snas+resource", "darts+arch_start"]
# variants: a progressive search whose second stage (epoch 2) prunes and widens K 2 → 1 (the step is recaptured on the
# rebuilt cells), SNAS with its resource penalty in the captured step, α steps that begin at epoch 2 (a new code path)
VARIANTS = {"darts+stages": ["space.partial_channels=2", "method.stage_epochs=[2,8]", "method.stage_partial_channels=[2,1]",
                             "method.stage_keep=[5,3]"],
            "snas+resource": ["method.resource=reparametrization", "method.resource_log=true"],
            "darts+arch_start": ["method.arch_start_epoch=2"],
            "pc_darts": ["method.arch_start_epoch=2"]}
CONSTANT_LR = {"sp_darts", "ex_darts"}  # nothing Python-side changes between the epochs: one capture serves


def cuda_batches(n, batch=16, size=16, seed=0, last=None):
    """``n`` (train, valid) pairs; ``last``: the size of a final partial batch (runs eagerly beside the graph)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [batch] * n if last is None else [batch] * (n - 1) + [last]
    return [tuple((torch.randn(b, 3, size, size, generator=g).cuda(),
                   torch.randint(0, 10, (b,), generator=g).cuda()) for _ in range(2)) for b in sizes]


def graph_vs_eager_state(name, graphs, space="nb201", steps=20, capturable=True):
    """α, weights and BN buffers after ``steps`` steps over epochs 1 and 2 (an lr change, α steps starting at epoch 2
    for the ``arch_start`` variants, each half ending in a partial batch), with or without graphs; ``capturable``
    False: a plain eager run (non-capturable Adam)."""
    from nasrun.config import build

    torch.manual_seed(0)
    sizes = ["space.C=8", "space.N=1"] if space.startswith("nb201") else ["space.C=8", "space.layers=3"]
    extra = ["method.inner_steps=5"] if name == "tse_darts" else VARIANTS.get(name, [])
    cfg = make_cfg([f"method={name.split('+')[0]}", f"space={space}", *sizes, *extra])
    sp = build(cfg.space)
    sup = sp.build_supernet(10).cuda()
    method = build(cfg.method, supernet=sup, space=sp)
    method.use_cuda_graphs(capturable)
    method.graphs.enabled = graphs
    torch.manual_seed(1)  # SP-DARTS's per-step Bernoulli draws
    for epoch, seed in ((1, 0), (2, 1)):
        half = cuda_batches(steps // 2, seed=seed, last=7)
        method.on_epoch_start(epoch, 10)
        if name == "tse_darts":
            for i in range(0, len(half), 5):
                method.step_group(half[i:i + 5])
        else:
            for t, v in half:
                method.step(t, v)
    torch.cuda.synchronize()
    if graphs:
        assert sum(g.captures for g in method.graphs.graphs.values()) >= (1 if name in CONSTANT_LR else 2)
        assert method.graphs.disabled is None and not any(g.failed for g in method.graphs.graphs.values())
        assert all(g.verified == g.captures for g in method.graphs.graphs.values())  # the self-check ran each time
    return [*[a.detach().clone() for a in method.arch_parameters()], *[v.clone() for v in sup.state_dict().values()]]


def close(a, b, rtol):
    if a.is_floating_point():
        return (a.double() - b.double()).abs().max() <= rtol * a.double().abs().max().clamp_min(1e-6)
    return torch.equal(a, b)


@pytest.mark.parametrize("name", GRAPH_METHODS)
def test_graph_step_equals_eager_step(name):
    """perf.md §4: 20 steps from the same state give the same α and weights replayed from graphs as eagerly with
    the same (capturable) optimisers, and within float tolerance of a plain non-capturable eager run."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    graphed = graph_vs_eager_state(name, True)
    eager = graph_vs_eager_state(name, False)
    plain = graph_vs_eager_state(name, False, capturable=False)
    assert all(close(a, b, 1e-6) for a, b in zip(eager, graphed))
    assert all(close(a, b, 1e-4) for a, b in zip(plain, graphed))


def test_self_check_and_fallback_on_the_gpu(capsys):
    """A step whose Python side changes between calls fails the self-check (eager from then on); a step that calls
    ``.item()`` fails its capture and runs eagerly with non-capturable optimisers; both runs stay exact."""
    from nasrun.graphs import GraphSet, GraphState

    def run(graphs, body):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                  torch.nn.LazyLinear(10)).cuda()
        net(torch.zeros(2, 3, 16, 16, device="cuda"))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, capturable=True)
        count = torch.zeros((), device="cuda")
        calls = {"n": 0}

        def step(x, y):
            calls["n"] += 1
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x), y) * body(x, calls["n"])
            loss.backward()
            opt.step()
            count.add_(calls["n"])
            return {"loss": loss.detach()}

        gs = GraphSet(graphs, lambda: GraphState([net], [opt], [count]))
        for t, _ in cuda_batches(8):
            gs.run("s", step, lambda: None, *t)
        torch.cuda.synchronize()
        return gs, [v.clone() for v in net.state_dict().values()]

    gs, _ = run(True, lambda x, n: 1.0)
    assert gs.graphs["s"].failed and "self-check" in gs.graphs["s"].failed
    gs, graphed = run(True, lambda x, n: 1.0 + 0 * x.sum().item())
    assert gs.disabled and "capture failed" in gs.disabled
    _, eager = run(False, lambda x, n: 1.0)
    assert all(close(a, b, 1e-4) for a, b in zip(eager, graphed))


@pytest.mark.parametrize("space", ["darts", "nb1shot1_s1"])
def test_graph_step_equals_eager_step_other_spaces(space):
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    eager, graphed = graph_vs_eager_state("darts", False, space), graph_vs_eager_state("darts", True, space)
    assert all((a - b).abs().max() <= 1e-6 * a.abs().max().clamp_min(1e-6) for a, b in zip(eager, graphed)
               if a.is_floating_point())


def test_retrain_graph_step_equals_eager():
    """The retraining step with drop-path (device RNG) and the auxiliary head, graphed vs eager."""
    import contextlib

    from nasrun.retrain import Protocol, Retrainer
    from nasrun.spaces import get_space

    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    out = []
    for graphs in (False, True):
        torch.manual_seed(0)
        net = get_space("darts").build_network("DARTS_V2", 10, C=8, layers=5, auxiliary=True).cuda()
        p = Protocol("t", 8, 5, False, 0.4, 0.2, 0, 10, 16, 0.025, 0.0, "cosine", 0.97, 1, 0.9, 3e-4, 5.0, 0.0)
        tr = Retrainer(net, p, contextlib.nullcontext, cuda_graphs=graphs)
        torch.manual_seed(1)
        for epoch, half in ((3, cuda_batches(10, size=32)), (4, cuda_batches(10, size=32, seed=1))):
            tr.on_epoch_start(epoch)
            for t, _ in half:
                tr.step(t)
        loss, acc, _ = tr.evaluate(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8).cuda(),
                                torch.randint(0, 10, (40,)).cuda(), Augment([0.5] * 3, [0.25] * 3), batch_size=16)
        out.append(([v.clone() for v in net.state_dict().values()], loss, acc))
    for a, b in zip(out[0][0], out[1][0]):
        assert (a.double() - b.double()).abs().max() <= 1e-6 * a.double().abs().max().clamp_min(1e-6)
    assert out[0][1] == pytest.approx(out[1][1], rel=1e-5) and out[0][2] == out[1][2]


@pytest.mark.parametrize("method", ["darts", "sp_darts"])  # SP-DARTS also carries device-side epoch stats
def test_checkpoint_crosses_paths(tmp_path, method):
    """A search checkpointed on the graph path resumes on the eager CPU path and vice versa."""
    base = ["dataset.synthetic.image_size=16", "dataset.synthetic.n_train=256", "space.C=8", "space.N=1",
            "trainer.epochs=2", f"method={method}"]
    for first, second in ((["trainer.device=cuda", "trainer.cuda_graphs=true"], ["trainer.device=cpu"]),
                          (["trainer.device=cpu"], ["trainer.device=cuda", "trainer.cuda_graphs=true"])):
        run = tmp_path / first[0].split("=")[1]
        run_search(make_cfg([*base, *first, "trainer.epochs=1"]), run)
        state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
        state["finished"] = False  # continue it for a second epoch on the other path
        state["config"]["trainer"]["epochs"] = 2
        torch.save(state, run / "checkpoint.pt")
        summary = run_search(make_cfg([*base, *second]), run)
        assert summary["epochs_run"] == 2
