"""DARTS space family (methods.md §1.1-1.3, §6.5-6.6, §8.1-8.2) and retraining (§7)."""

import json
import os
import signal

import pytest
import torch

import nasrun.engine as engine
from nasrun.errors import Interrupted, UserError
from nasrun.evaluate import run_eval
from nasrun.retrain import Protocol
from nasrun.search import run_search
from nasrun.spaces import available_spaces, get_space
from nasrun.spaces.darts import cell_depth
from nasrun.spaces.darts_genotypes import NAMED, DartsGenotype, DeepGenotype
from nasrun.spaces.ops import DARTS_OPS
from nasrun.utils import count_flops, count_parameters

from .conftest import make_cfg

DARTS = get_space("darts")
DARTS_SPACES = [s for s in available_spaces() if not s.startswith("nb201")]


@pytest.mark.parametrize("name, count", [
    ("darts", (180 * 7**8) ** 2), ("darts_7op", (180 * 7**8) ** 2), ("darts_fixed", (7**8) ** 2),
    ("amended_deep", 2**160), ("darts_s1", (180 * 2**8) ** 2), ("darts_s2", (180 * 2**8) ** 2),
    ("darts_s3", (180 * 2**8) ** 2), ("darts_s4", (180 * 2**8) ** 2),
])
def test_num_architectures(name, count):
    assert get_space(name).num_architectures() == count


def test_published_sizes():
    assert f"{DARTS.num_architectures():.4e}" == "1.0767e+18"
    assert f"{get_space('darts_fixed').num_architectures():.4e}" == "3.3233e+13"
    assert f"{get_space('amended_deep').num_architectures():.2e}" == "1.46e+48"


@pytest.mark.parametrize("name, params", [("DARTS_V2", 3349342), ("DARTS_V1", 3169414), ("PC_DARTS", 3634678),
                                          ("PDARTS", 3433798), ("DrNAS", 4099294)])
def test_named_genotype_parameter_counts(name, params):
    assert count_parameters(DARTS.build_network(name, 10)) == params


def test_parameter_count_variants_and_auxiliary():
    assert count_parameters(DARTS.build_network("DARTS_V2", 10, C=16, layers=8)) == 246106
    assert count_parameters(DARTS.build_network("DARTS_V2", 100)) == 3401272
    net = DARTS.build_network("DARTS_V2", 10)
    assert sum(p.numel() for n, p in net.named_parameters() if "auxiliary" in n) == 476426
    assert round(count_flops(net, (1, 3, 32, 32)) / 1e6) == 528  # the commonly reported 528M mult-adds
    mobile = DARTS.build_network("DARTS_V2", 1000, C=48, layers=14, imagenet=True)
    assert round(count_parameters(mobile) / 1e6, 1) == 4.7  # DARTS paper, ImageNet mobile setting


@pytest.mark.parametrize("op, expected", [
    ("sep_conv_3x3", lambda C: 2 * (C * 9 + C * C + 2 * C)), ("sep_conv_5x5", lambda C: 2 * (C * 25 + C * C + 2 * C)),
    ("dil_conv_3x3", lambda C: C * 9 + C * C + 2 * C), ("dil_conv_5x5", lambda C: C * 25 + C * C + 2 * C),
    ("max_pool_3x3", lambda C: 0), ("avg_pool_3x3", lambda C: 0), ("none", lambda C: 0), ("noise", lambda C: 0),
])
def test_op_unit_counts(op, expected):
    for C in (8, 36):
        assert sum(p.numel() for p in DARTS_OPS[op](C, 1, True).parameters()) == expected(C)
    assert sum(p.numel() for p in DARTS_OPS["skip_connect"](36, 2, True).parameters()) == 36 * 36 + 2 * 36


def test_noise_op_has_fresh_values_and_no_gradient():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    op = DARTS_OPS["noise"](3, 2, False)
    a, b = op(x), op(x)
    assert a.shape == (2, 3, 4, 4) and not torch.equal(a, b) and not a.requires_grad


@pytest.mark.parametrize("name", sorted(NAMED))
def test_text_round_trip_of_named_genotypes(name):
    g = NAMED[name]
    text = str(g)
    assert DARTS.parse_genotype(text) == g and str(DARTS.parse_genotype(text)) == text
    assert DARTS.parse_genotype(g.to_json()).normal == g.normal
    assert DARTS.parse_genotype(name) == g


def test_reference_text_forms_paste_in():
    quark0 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
              "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
              "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
              "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
              "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
    assert DARTS.format_genotype(quark0) == quark0 and DARTS.parse_genotype(quark0) == NAMED["DARTS_V2"]
    log_form = quark0.replace("[2, 3, 4, 5]", "range(2, 6)")
    assert DARTS.format_genotype(log_form) == log_form


@pytest.mark.parametrize("space, text, needle", [
    ("darts", "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "space=nb201"),
    ("darts", "Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])", "has 1 entries"),
    ("darts", "Genotype(normal=[('sep_conv_3x3', 0), ", "column"),
    ("darts", "DARTS_V9", "unknown genotype"),
    ("darts", str(NAMED["DARTS_V2"]).replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "node 3 takes input 5"),
    ("darts", str(NAMED["DARTS_V2"]).replace("'dil_conv_3x3'", "'conv_7x7'"), "uses 'conv_7x7'"),
    ("darts_s2", "DARTS_V2", "normal node 3 uses 'dil_conv_3x3'"),
    ("darts", str(NAMED["DARTS_V2"]).replace("normal_concat=[2, 3, 4, 5], ", ""), "missing"),
])
def test_malformed_or_wrong_space_genotypes(space, text, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        get_space(space).parse_genotype(text)


def hand_weights(space, picks):
    """Uniform-ish weights with chosen (edge, op) → value overrides, per cell type."""
    E, K = space.alpha_shapes()["normal"]
    w = {k: torch.full((E, K), 0.01) for k in space.alpha_shapes()}
    for key, items in picks.items():
        for (e, op), v in items.items():
            w[key][e, space.op_names(key)[e].index(op)] = v
    return w


def test_derivation_excludes_none_and_keeps_top_two_edges():
    picks = {"normal": {(0, "none"): 0.9, (0, "sep_conv_3x3"): 0.2, (1, "skip_connect"): 0.3,
                        (2, "dil_conv_5x5"): 0.5, (3, "max_pool_3x3"): 0.4, (4, "none"): 0.95,
                        (5, "sep_conv_5x5"): 0.6, (8, "avg_pool_3x3"): 0.7, (6, "none"): 0.99,
                        (13, "dil_conv_3x3"): 0.8, (9, "sep_conv_3x3"): 0.1, (11, "skip_connect"): 0.2},
             "reduce": {(0, "max_pool_3x3"): 0.5, (1, "max_pool_3x3"): 0.6}}
    g = DARTS.derive(hand_weights(DARTS, picks))
    assert g.normal[:2] == (("skip_connect", 1), ("sep_conv_3x3", 0))  # edge 0's none (0.9) is ignored
    assert g.normal[2:4] == (("dil_conv_5x5", 0), ("max_pool_3x3", 1))  # node1: edges 2,3 beat edge 4 (none only)
    assert g.normal[4:6] == (("avg_pool_3x3", 3), ("sep_conv_5x5", 0))
    assert g.normal[6:8] == (("dil_conv_3x3", 4), ("skip_connect", 2))
    assert g.reduce[:2] == (("max_pool_3x3", 1), ("max_pool_3x3", 0))
    assert DARTS.genotype_stats(g) == {"skip_count": 2, "depth": cell_depth(g.normal)}


def test_derivation_with_per_edge_lists():
    s1 = get_space("darts_s1")
    assert s1.op_names("normal")[5] == ["max_pool_3x3", "skip_connect"] and s1.alpha_shapes()["normal"] == (14, 2)
    w = {k: torch.tensor([[0.3, 0.7]] * 14) for k in ("normal", "reduce")}
    g = s1.derive(w)
    assert g.normal[0] == ("dil_conv_3x3", 0) and g.reduce[0] == ("avg_pool_3x3", 0)
    s3 = get_space("darts_s3")
    w = {k: torch.tensor([[0.8, 0.15, 0.05]] * 14) for k in ("normal", "reduce")}
    assert all(op == "skip_connect" for op, _ in s3.derive(w).normal)  # none never chosen


def test_fixed_and_deep_topologies():
    fixed = get_space("darts_fixed")
    assert fixed.edges == [(0, 0), (0, 1), (1, 0), (1, 2), (2, 0), (2, 3), (3, 0), (3, 4)]
    g = fixed.derive({k: torch.rand(8, 7) for k in ("normal", "reduce")})
    for i in range(4):
        assert sorted(j for _, j in g.normal[2 * i:2 * i + 2]) == [0, i + 1]
    assert all(op != "none" for op, _ in g.normal)
    deep = get_space("amended_deep")
    shapes = deep.alpha_shapes()
    assert len(shapes) == 20 and shapes["cell7"] == (8, 2)
    dg = deep.derive({k: torch.rand(*s) for k, s in shapes.items()})
    assert isinstance(dg, DeepGenotype) and len(dg.cells_genes) == 20
    assert deep.parse_genotype(str(dg)) == dg
    assert count_parameters(deep.build_network(dg, 10, C=8)) > 0


@pytest.mark.parametrize("genes, depth", [
    (NAMED["DARTS_V2"].normal, 3),
    ((("skip_connect", 0), ("skip_connect", 1)) * 4, 2),
    ((("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("skip_connect", 0),
      ("sep_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_3x3", 4), ("skip_connect", 1)), 5),
])
def test_cell_depth(genes, depth):
    assert cell_depth(genes) == depth


def test_eval_network_auxiliary_and_drop_path():
    torch.manual_seed(0)
    net = DARTS.build_network("DARTS_V2", 10, C=8, layers=5)
    x = torch.randn(2, 3, 32, 32)
    net.train()
    logits, aux = net(x)
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(x)[1] is None
    net.train()
    net.drop_path_prob = 0.5
    torch.manual_seed(1)
    a = net(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, net(x)[0])


def test_protocol_schedules():
    base = dict(name="p", C=36, layers=20, imagenet=False, auxiliary_weight=0.4, drop_path=0.2, cutout=16, epochs=600,
                batch_size=96, lr=0.025, lr_min=0.0, schedule="cosine", gamma=0.97, lr_offset=1, momentum=0.9,
                weight_decay=3e-4, grad_clip=5.0, label_smoothing=0.0)
    p = Protocol(**base)
    assert p.lr_at(0) == pytest.approx(0.025 * (1 + torch.cos(torch.tensor(torch.pi / 600)).item()) / 2)
    assert p.lr_at(599) == pytest.approx(0.0)
    assert Protocol(**{**base, "lr_offset": 0}).lr_at(0) == 0.025
    assert Protocol(**{**base, "schedule": "exponential", "lr": 0.1}).lr_at(2) == pytest.approx(0.1 * 0.97**3)


@pytest.mark.parametrize("space", DARTS_SPACES)
def test_one_epoch_search_on_every_darts_space(space, tmp_path):
    summary = run_search(make_cfg([f"space={space}", "trainer.epochs=1"]), tmp_path)
    g = get_space(space).parse_genotype(summary["genotype"])
    assert 2 <= summary["depth"] <= 5 and g is not None
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"skip_count", "depth", "genotype"} <= set(record)


RETRAIN = ["space=darts", "genotype=DARTS_V2", "dataset=synthetic", "dataset.synthetic.image_size=32",
           "dataset.synthetic.n_train=48", "retrain.C=4", "retrain.layers=3", "retrain.epochs=2",
           "retrain.batch_size=16", "trainer.device=cpu", "trainer.progress=false"]


def test_retrain_outputs_and_resume_after_interrupt(tmp_path, monkeypatch):
    cfg = make_cfg(RETRAIN, config_name="eval", tiny=False)
    straight = run_eval(cfg, tmp_path / "straight")
    for name in ("config.yaml", "env.json", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (tmp_path / "straight" / name).exists(), name
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1] and {"test_acc", "lr", "drop_path_prob"} <= set(lines[0])
    assert lines[1]["drop_path_prob"] == pytest.approx(0.2 * 1 / 2)
    assert straight["test_error"] == pytest.approx(100 - straight["test_acc"])
    assert straight["params"] == count_parameters(get_space("darts").build_network("DARTS_V2", 4, C=4, layers=3))

    calls = {"n": 0}
    original = engine.accumulate

    def interrupt(*args):
        original(*args)
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 1, step 1
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(engine, "accumulate", interrupt)
    with pytest.raises(Interrupted):
        run_eval(cfg, tmp_path / "resumed")
    monkeypatch.setattr(engine, "accumulate", original)
    resumed = run_eval(cfg, tmp_path / "resumed")
    assert resumed["test_acc"] == straight["test_acc"]
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["retrainer"]["net"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["retrainer"]["net"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_retrain_from_search_run_and_named_presets(tmp_path):
    run_search(make_cfg(["space=darts", "trainer.epochs=1"]), tmp_path / "search")
    cfg = make_cfg([a for a in RETRAIN if not a.startswith("genotype=")] + [f"genotype={tmp_path / 'search'}",
                                                                            "retrain.epochs=1"], "eval", tiny=False)
    summary = run_eval(cfg, tmp_path / "eval")
    searched = json.loads((tmp_path / "search" / "genotype.json").read_text())["genotype"]
    assert summary["genotype"] == searched
    for preset, (C, layers) in {"robust_small": (16, 8), "tse_8layer": (36, 8), "imagenet": (48, 14),
                                "darts": (36, 20)}.items():
        p = make_cfg([f"retrain={preset}"], "eval", tiny=False).retrain
        assert (p.C, p.layers) == (C, layers)


def test_darts_genotype_dataclass_is_plain_data():
    g = NAMED["DARTS_V2"]
    assert isinstance(g, DartsGenotype) and hash(g) == hash(DARTS.parse_genotype(str(g)))


@pytest.mark.parametrize("name, size_m", [("darts_pt_s5_0", 2.85), ("darts_pt_s5_1", 3.05), ("darts_pt_s5_2", 2.66),
                                          ("darts_pt_s5_3", 3.33), ("blank_pt_s5_0", 3.04), ("blank_pt_s5_1", 3.15),
                                          ("blank_pt_s5_2", 2.58), ("blank_pt_s5_3", 3.40)])
def test_darts_pt_cells_match_their_published_sizes(name, size_m):
    """ruocwang/darts-pt annotates each published cell with its parameter size in M (C=36, 20 cells)."""
    assert round(count_parameters(DARTS.build_network(name, 10)) / 1e6, 2) == size_m


def test_search_auxiliary_tower_adds_its_weighted_loss_and_leaves_the_main_path_alone():
    """[AMD] §4.1.2: loss = CE(logits) + w_aux·CE(tower(features after the second reduction)); the main logits
    equal those of the same supernet without a tower."""
    from nasrun.config import build

    from .conftest import tiny_method

    torch.manual_seed(0)
    space = get_space("darts_fixed", C=4, layers=3, search_auxiliary=True, search_aux_weight=0.3)
    plain = get_space("darts_fixed", C=4, layers=3)
    sup, twin = space.build_supernet(4), plain.build_supernet(4)
    assert set(twin.state_dict()) < set(sup.state_dict())
    twin.load_state_dict(sup.state_dict(), strict=False)
    _, _, method = tiny_method(["space=darts_fixed"])
    method.supernet = sup
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 4, (6,))
    w = {k: torch.softmax(torch.randn(*s), -1) for k, s in space.alpha_shapes().items()}
    feats = []
    twin.cells[2].register_forward_hook(lambda m, i, o: feats.append(o))
    main = twin(x, w)
    expected = torch.nn.functional.cross_entropy(main, y) + 0.3 * torch.nn.functional.cross_entropy(
        sup.auxiliary_head(feats[0]), y)
    loss, logits = method.loss(x, y, w)
    assert torch.allclose(logits, main, atol=1e-6) and torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert sup.auxiliary_head.classifier.weight.grad.abs().sum() > 0
    sup.eval(), twin.eval()
    assert torch.equal(sup(x, w), twin(x, w))  # no tower outside training
    with pytest.raises(UserError, match="at least 5×5"):
        sup.train()(torch.randn(2, 3, 8, 8), w)
    assert build(make_cfg(["+experiment=amended_darts_s1"], tiny=False).space).search_auxiliary


def test_search_drop_path_drops_whole_edges_per_sample():
    """Node 0 of a cell sees only the preprocessed inputs, so with drop-path each sample's node-0 output is
    2·(a subset of its two edge outputs) at p = 0.5; the probability ramps as 0.2·e/E; p = 0 changes nothing."""
    torch.manual_seed(0)
    space = get_space("darts_fixed", C=4, layers=3, search_drop_path=0.2)
    sup = space.build_supernet(4)
    sup.on_epoch_start(30, 100)
    assert sup.drop_prob.item() == pytest.approx(0.06)
    cell = sup.cells[0]
    s = torch.randn(64, 12, 8, 8)
    w = torch.softmax(torch.randn(8, 7), -1)
    from nasrun.spaces.ops import mixed

    with torch.no_grad():
        undropped = cell(s, s, w)  # the same (fused) forward without drop-path
        assert torch.equal(cell(s, s, w, torch.tensor(0.0)), undropped)
        assert torch.allclose(cell.forward_reference(s, s, w, torch.tensor(0.0)), undropped, atol=1e-6)
        out = cell(s, s, w, torch.tensor(0.5))[:, :4]
        h0, h1 = cell.preprocess0(s), cell.preprocess1(s)
        a, b = mixed(cell.ops[0], h0, w[0]), mixed(cell.ops[1], h1, w[1])
    combos = torch.stack([0 * a, 2 * a, 2 * b, 2 * a + 2 * b])  # (4, n, C, h, w)
    match = ((out[None] - combos).flatten(2).abs().amax(-1) < 1e-5)  # (4, n)
    assert match.any(0).all() and match.any(1).all()  # every sample is one subset; every subset occurs
