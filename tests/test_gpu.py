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
