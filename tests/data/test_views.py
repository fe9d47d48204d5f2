"""Replayable views: view v of sample i depends on (seed, i, v) alone, and is the augmentation it claims."""

import numpy as np
import pytest
import torch

from kdlab.data.augment import AugmentConfig
from kdlab.data.views import ReplayViews, uniform, views_fact
from kdlab.errors import ConfigError


def _data(n=40, c=1, h=8, w=8, k=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, h, w, generator=g), torch.randint(0, k, (n,), generator=g)


def test_a_view_is_the_same_in_any_batch_and_order():
    X, Y = _data()
    views = ReplayViews(AugmentConfig(crop=2, flip=True, mixup=0.4, cutmix=1.0), seed=3, views=4, num_classes=5)
    idx = torch.tensor([5, 17, 2, 33])
    v = torch.tensor([0, 3, 1, 2])
    x1, y1 = views(X, Y, idx, v)
    perm = torch.tensor([2, 0, 3, 1])
    x2, y2 = views(X, Y, idx[perm], v[perm])
    assert torch.equal(x1[perm], x2) and torch.equal(y1[perm], y2)
    x3, _ = views(X, Y, idx[:1], v[:1])  # a batch of one
    assert torch.equal(x3[0], x1[0])


def test_views_differ_across_views_and_seeds():
    X, Y = _data()
    idx = torch.arange(40)
    a = ReplayViews(AugmentConfig(crop=2, flip=True), seed=0, views=2, num_classes=5)
    b = ReplayViews(AugmentConfig(crop=2, flip=True), seed=1, views=2, num_classes=5)
    x0, _ = a(X, Y, idx, torch.zeros(40, dtype=torch.long))
    x1, _ = a(X, Y, idx, torch.ones(40, dtype=torch.long))
    xb, _ = b(X, Y, idx, torch.zeros(40, dtype=torch.long))
    assert not torch.equal(x0, x1) and not torch.equal(x0, xb)


def test_crop_flip_view_is_a_shifted_possibly_mirrored_copy():
    """Each view equals the image padded with zeros, cut at some offset in [0, 2p], maybe mirrored."""
    X, Y = _data(n=12)
    p = 2
    views = ReplayViews(AugmentConfig(crop=p, flip=True), seed=5, views=3, num_classes=5)
    idx = torch.arange(12)
    x, y = views(X, Y, idx, torch.full((12,), 2))
    assert torch.equal(y, Y)
    padded = torch.nn.functional.pad(X, (p,) * 4)
    flips = 0
    for i in range(12):
        found = None
        for dy in range(2 * p + 1):
            for dx in range(2 * p + 1):
                crop = padded[i, :, dy:dy + 8, dx:dx + 8]
                if torch.equal(crop, x[i]):
                    found = "plain"
                elif torch.equal(crop.flip(-1), x[i]):
                    found = "flip"
        assert found is not None, f"sample {i} is not a crop of its padded image"
        flips += found == "flip"
    assert 0 < flips < 12


def test_mixup_view_blends_two_samples_with_matching_soft_labels():
    X, Y = _data(n=30)
    views = ReplayViews(AugmentConfig(mixup=1.0), seed=2, views=2, num_classes=5)
    idx = torch.arange(30)
    x, y = views(X, Y, idx, torch.zeros(30, dtype=torch.long))
    assert torch.allclose(y.sum(1), torch.ones(30))
    for i in range(30):
        lam = y[i, Y[i]].item() if (y[i] > 0).sum() == 2 else None
        if lam is None:
            continue  # the partner has the same label: λ not readable from y
        others = [j for j in range(30) if Y[j] != Y[i] and y[i, Y[j]] > 0]
        assert any(torch.allclose(x[i], lam * X[i] + (1 - lam) * X[j], atol=1e-5) for j in others)


def test_cutmix_label_weight_is_the_area_kept():
    X, Y = _data(n=20, h=16, w=16)
    views = ReplayViews(AugmentConfig(cutmix=1.0), seed=4, views=1, num_classes=5)
    x, y = views(X, Y, torch.arange(20), torch.zeros(20, dtype=torch.long))
    for i in range(20):
        kept = (x[i] == X[i]).all(0).float().mean().item()  # pixels still the sample's own
        if (y[i] > 0).sum() == 2:
            assert y[i, Y[i]].item() == pytest.approx(kept, abs=1e-6)


def test_epoch_order_cycles_through_every_view():
    views = ReplayViews(AugmentConfig(flip=True), seed=0, views=4, num_classes=5)
    idx = torch.arange(50)
    seen = torch.stack([views.view_of(e, idx) for e in range(1, 5)])
    assert all(sorted(seen[:, i].tolist()) == [0, 1, 2, 3] for i in range(50))
    assert torch.equal(views.view_of(5, idx), views.view_of(1, idx))
    assert "fresh" in views_fact(views, 4) and "2 times" in views_fact(views, 8)


def test_uniforms_look_uniform():
    u = uniform(7, torch.arange(20000), 0, 1)
    assert 0 <= u.min() and u.max() < 1
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    assert hist.min() > 1800 and hist.max() < 2200


def test_bad_view_count_is_one_line():
    with pytest.raises(ConfigError, match="views"):
        ReplayViews(AugmentConfig(), seed=0, views=0, num_classes=5)
