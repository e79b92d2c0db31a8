"""NAS-Bench-201 space: sizes, codec, derivation, parameter/FLOP oracles (methods.md §1.4, §8.1, §8.3)."""

import random

import pytest
import torch

from nasrun.errors import UserError
from nasrun.spaces import available_spaces, get_space
from nasrun.spaces.nb201 import EDGES, NB201_OPS, NB201Genotype, canonical_form
from nasrun.utils import count_flops, count_parameters

SPACE = get_space("nb201")
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|"
README_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
HEADS = {10: 32, 100: 32, 120: 16}


def test_sizes():
    assert SPACE.num_architectures() == 15625
    assert get_space("nb201_noskip").num_architectures() == 4096
    assert len({canonical_form(g) for g in SPACE.all_genotypes()}) == 6466


def test_edge_order_is_sorted_keys():
    assert list(EDGES) == sorted(EDGES) == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]
    assert SPACE.alpha_shapes() == {"normal": (6, 5)}


def test_round_trip_every_cell():
    for g in SPACE.all_genotypes():
        text = SPACE.format_genotype(g)
        assert SPACE.parse_genotype(text) == g
        assert SPACE.format_genotype(SPACE.parse_genotype(text)) == text
    assert SPACE.format_genotype(SPACE.parse_genotype(README_ARCH)) == README_ARCH


@pytest.mark.parametrize("bad, where", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|", "expected 3 nodes"),
    ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "should take input 0"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 needs 2 inputs"),
    ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "node 1"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])", "space=darts"),
    ('{"space": "darts", "genotype": "x"}', "space=darts"),
])
def test_malformed_genotypes_say_where(bad, where):
    with pytest.raises(UserError, match=where.replace("(", r"\(")):
        SPACE.parse_genotype(bad)


def test_noskip_space_rejects_skip():
    with pytest.raises(UserError, match="unknown op 'skip_connect'"):
        get_space("nb201_noskip").parse_genotype(ALL_SKIP)


def expected_params(genotype, classes):
    """Independent op arithmetic (methods.md §8.3): 73,306 for the fixed skeleton at 10 classes,
    plus N=5 cells per stage with conv3 = 9C²+2C and conv1 = C²+2C."""
    per_op = {"nor_conv_3x3": lambda C: 9 * C * C + 2 * C, "nor_conv_1x1": lambda C: C * C + 2 * C}
    total = 73306 - 650 + 64 * classes + classes
    for C in (16, 32, 64):
        total += 5 * sum(per_op.get(op, lambda C: 0)(C) for op in genotype.edge_ops().values())
    return total


def test_param_counts_match_benchmark_arithmetic():
    rng = random.Random(0)
    genotypes = rng.sample(list(SPACE.all_genotypes()), 22) + [SPACE.parse_genotype(a) for a in (ALL_SKIP, ALL_CONV3)]
    for g in genotypes:
        for classes in HEADS:
            assert count_parameters(SPACE.build_network(g, classes)) == expected_params(g, classes), str(g)


@pytest.mark.parametrize("arch, classes, params_m, flops_m", [
    (ALL_SKIP, 10, 0.073306, 7.78305), (ALL_SKIP, 100, 0.079156, 7.7889), (ALL_SKIP, 120, 0.080456, 1.9534),
    (ALL_CONV3, 10, 1.531546, 220.11969), (ALL_CONV3, 100, 1.537396, 220.12554), (ALL_CONV3, 120, 1.538696, 55.03756),
    (RESNET, 10, 0.559386, None), (README_ARCH, 10, 0.802426, None),
])
def test_published_extremes(arch, classes, params_m, flops_m):
    net = SPACE.build_network(arch, classes)
    assert count_parameters(net) == round(params_m * 1e6)
    if flops_m is not None:
        assert count_flops(net, (1, 3, HEADS[classes], HEADS[classes])) / 1e6 == pytest.approx(flops_m, abs=5e-6)


def test_supernet_with_one_hot_weights_equals_network():
    torch.manual_seed(0)
    space = get_space("nb201", C=4, N=1, affine=True, track_running_stats=True)
    sup = space.build_supernet(10)
    g = SPACE.parse_genotype(README_ARCH)
    net = space.build_network(g, 10)
    # copy the supernet's chosen-op weights into the network
    sd, target = sup.state_dict(), {}
    for k in net.state_dict():
        parts = k.split(".")
        if parts[0] == "cells" and parts[2] == "edges":
            op_index = space.ops.index(g.edge_ops()[parts[3]])
            k_sup = ".".join(parts[:4] + [str(op_index)] + parts[4:])
        else:
            k_sup = k
        target[k] = sd[k_sup]
    net.load_state_dict(target)
    onehot = torch.zeros(6, 5)
    for e, op in g.edge_ops().items():
        onehot[EDGES.index(e), space.ops.index(op)] = 1
    x = torch.randn(3, 3, 8, 8)
    sup.train(), net.train()
    assert torch.allclose(sup(x, {"normal": onehot}), net(x), atol=1e-5)


def test_derive_argmax_including_none():
    w = torch.zeros(6, 5)
    choice = ["none", "nor_conv_3x3", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none"]
    for e, op in enumerate(choice):
        w[e, NB201_OPS.index(op)] = 1.0
    g = SPACE.derive({"normal": w})
    assert str(g) == "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"


@pytest.mark.parametrize("arch, skips, depth", [
    (ALL_SKIP, 6, 3), (RESNET, 1, 1), (README_ARCH, 2, 3),  # RESNET (§8.3 string): node 3 sees only skip~0
    ("|none~0|+|none~0|none~1|+|nor_conv_1x1~0|none~1|none~2|", 0, 1),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", 0, 0),
])
def test_genotype_stats(arch, skips, depth):
    assert SPACE.genotype_stats(arch) == {"skip_count": skips, "depth": depth}


def test_every_space_config_builds():
    for name in available_spaces():
        space = get_space(name, C=4, **({"N": 1} if name.startswith("nb201") else {"layers": 3}))
        sup = space.build_supernet(10)
        shapes = space.alpha_shapes()
        out = sup(torch.randn(2, 3, 8, 8), {k: torch.rand(*s) for k, s in shapes.items()})
        assert out.shape == (2, 10)


def test_genotype_is_plain_data():
    g = SPACE.parse_genotype(README_ARCH)
    assert isinstance(g, NB201Genotype) and hash(g) == hash(SPACE.parse_genotype(README_ARCH))
