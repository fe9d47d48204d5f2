"""Per-batch augmentation: what each transform does to known pixels and labels, and its seeding."""

from __future__ import annotations

import pytest
import torch

from kdlab.data.augment import AugmentConfig, build_augment, cutmix, mixup, random_crop_flip
from kdlab.errors import ConfigError
from kdlab.losses.kd import hard_loss
from tests.optional import require


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dot_images(b: int, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    """Images whose only non-zero pixel is at (row 3, column 2), value 1 + channel."""
    x = torch.zeros(b, c, h, w)
    x[:, :, 3, 2] = torch.arange(1, c + 1, dtype=torch.float32)[:, None].T
    return x


def where_dot(x: torch.Tensor) -> list[tuple[int, int] | None]:
    """(row, col) of the non-zero pixel of each image's channel 0, or None when cropped away."""
    out = []
    for img in x[:, 0]:
        nz = img.nonzero()
        out.append(tuple(nz[0].tolist()) if len(nz) else None)
    return out


def test_crop_shifts_every_sample_by_its_own_offset_and_keeps_channels_together():
    x = dot_images(64)
    out = random_crop_flip(x, 2, False, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = set()
    for img, pos in zip(out, where_dot(out)):
        assert pos is not None  # a shift of at most 2 keeps (3, 2) inside an 8×8 image
        dy, dx = pos[0] - 3, pos[1] - 2
        assert -2 <= dy <= 2 and -2 <= dx <= 2
        shifts.add((dy, dx))
        assert img[:, pos[0], pos[1]].tolist() == [1.0, 2.0, 3.0]  # all channels moved together
        assert img.count_nonzero() == 3  # nothing else appeared: padding is zero
    assert len(shifts) > 10  # per-sample offsets, not one for the batch


def test_flip_mirrors_about_half_the_samples():
    x = dot_images(200)
    out = random_crop_flip(x, 0, True, gen())
    positions = where_dot(out)
    assert set(positions) == {(3, 2), (3, 5)}  # column 2 of 8 mirrors to column 5
    flipped = sum(p == (3, 5) for p in positions)
    assert 70 < flipped < 130
    assert torch.equal(out[[i for i, p in enumerate(positions) if p == (3, 5)]], x[: flipped].flip(-1))


def test_same_generator_seed_same_batch_and_different_seed_different_batch():
    aug = build_augment({"crop": 4, "flip": True, "mixup": 0.4, "cutmix": 1.0}, 10)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    a, b, c = aug(x, y, gen(1)), aug(x, y, gen(1)), aug(x, y, gen(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_uint8_crop_flip_stays_uint8_and_global_rng_is_untouched():
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(4)
    state = torch.get_rng_state()
    out, labels = build_augment({"crop": 4, "flip": True}, 10)(x, y, gen())
    assert out.dtype == torch.uint8 and out.shape == x.shape and torch.equal(labels, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_crop_padding_on_normalised_images_is_black():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    raw = torch.ones(32, 3, 8, 8)  # white images, normalised
    x = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    out, _ = build_augment({"crop": 3}, 10, mean=mean, std=std)(x, torch.zeros(32, dtype=torch.long), gen())
    back = out * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    assert torch.allclose(back.unique(), torch.tensor([0.0, 1.0]), atol=1e-6)  # white content, black border
    assert (back == 0).any()


def distinct_batch(b: int = 12, h: int = 10, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is constant i and has class i, so a mixed pixel tells whom it came from."""
    return torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 1, h, w).clone(), torch.arange(b)


def test_mixup_soft_labels_are_the_lambda_used_and_sum_to_one():
    x, y = distinct_batch()
    out, soft, lam = mixup(x, y, 0.4, 12, gen(3))
    assert soft.dtype == torch.float32 and soft.shape == (12, 12)
    assert torch.allclose(soft.sum(1), torch.ones(12))
    for i in range(12):
        partner = int(torch.tensor([j for j in range(12) if j != i and soft[i, j] > 0] or [i]))
        if partner != i:
            assert soft[i, i].item() == pytest.approx(lam) and soft[i, partner].item() == pytest.approx(1 - lam)
        assert torch.allclose(out[i], torch.full_like(out[i], lam * i + (1 - lam) * partner))
    assert 0 < lam < 1


def test_cutmix_lambda_is_the_pasted_area_fraction():
    x, y = distinct_batch(h=16, w=20)
    mixed = 0
    for seed in range(5):
        out, soft, lam = cutmix(x, y, 1.0, 12, gen(seed))
        assert torch.allclose(soft.sum(1), torch.ones(12))
        for i in range(12):
            partners = [j for j in (soft[i] > 0).nonzero().flatten().tolist() if j != i]
            if not partners:  # paired with itself: unchanged
                assert torch.equal(out[i], x[i])
                continue
            mixed += 1
            (j,) = partners
            assert set(out[i].unique().tolist()) <= {float(i), float(j)}
            assert (out[i] == i).float().mean().item() == pytest.approx(lam)  # own area = λ, exactly
            assert soft[i, i].item() == pytest.approx(lam) and soft[i, j].item() == pytest.approx(1 - lam)
    assert mixed > 20


def test_mixed_soft_labels_flow_into_the_hard_term():
    x, y = distinct_batch(4)
    aug = build_augment({"mixup": 1.0}, 4)
    _, soft = aug(x, y, gen())
    logits = torch.randn(4, 4)
    expected = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(hard_loss(logits, soft), expected)


def test_disabled_config_is_identity_and_flags_say_so():
    cfg = AugmentConfig.from_dict(None)
    assert not cfg.enabled and not cfg.mixes
    x, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])
    out, labels = build_augment(cfg, 3)(x, y, gen())
    assert torch.equal(out, x) and torch.equal(labels, y)
    assert AugmentConfig.from_dict({"cutmix": 1.0}).mixes and AugmentConfig.from_dict({"flip": True}).enabled


@pytest.mark.parametrize("section,message", [
    ({"crops": 4}, r"augment.crops: unknown augmentation; accepted: crop, flip, autoaugment, randaugment, mixup, cutmix"),
    ({"crop": -1}, r"augment.crop: padding in pixels must be an integer >= 0"),
    ({"crop": True}, r"augment.crop"),
    ({"flip": "yes"}, r"augment.flip: must be true or false"),
    ({"autoaugment": "cifar"}, r"augment.autoaugment: unknown policy 'cifar'; choose one of: cifar10, imagenet, svhn"),
    ({"randaugment": {"n": 2, "m": 31}}, r"augment.randaugment: expected \{n: ops >= 1, m: magnitude 0..30\}"),
    ({"randaugment": {"k": 2}}, r"augment.randaugment"),
    ({"randaugment": {"n": 2}, "autoaugment": "cifar10"}, r"autoaugment and randaugment are alternatives"),
    ({"mixup": -0.2}, r"augment.mixup: Beta concentration alpha must be a number >= 0"),
    ({"cutmix": float("nan")}, r"augment.cutmix"),
    ([1, 2], r"augment: expected a mapping"),
])
def test_bad_sections_are_one_line_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig.from_dict(section)


def test_runtime_misuse_is_explained():
    with pytest.raises(ConfigError, match="mixup needs float images"):
        build_augment({"mixup": 1.0}, 10)(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), gen())
    with pytest.raises(ConfigError, match=r"mean has 2 values for 3-channel images"):
        build_augment({"crop": 1}, 10, mean=[0.1, 0.2], std=1.0)(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), gen())


# --- policies (torchvision; CI installs it) -------------------------------------------------


@pytest.mark.parametrize("section", [{"autoaugment": "cifar10"}, {"randaugment": {"n": 2, "m": 9}}])
def test_policies_run_per_sample_on_uint8_and_are_seeded(section):
    require("torchvision")
    x = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8)
    x[12:] = x[:12]  # equal pairs: with per-sample ops most pairs still end up different
    y = torch.arange(24) % 10
    aug = build_augment(section, 10)
    out, labels = aug(x, y, gen(5))
    again, _ = aug(x, y, gen(5))
    assert out.dtype == torch.uint8 and out.shape == x.shape and torch.equal(labels, y)
    assert torch.equal(out, again)
    assert sum(not torch.equal(out[i], out[i + 12]) for i in range(12)) >= 6


def test_policy_on_normalised_greyscale_round_trips_through_uint8():
    require("torchvision")
    raw = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    mean, std = 0.1307, 0.3081
    x = (raw.float() / 255 - mean) / std
    aug = build_augment({"autoaugment": "imagenet"}, 10, mean=mean, std=std)
    out, _ = aug(x, torch.zeros(6, dtype=torch.long), gen(0))
    ref, _ = build_augment({"autoaugment": "imagenet"}, 10)(raw, torch.zeros(6, dtype=torch.long), gen(0))
    assert out.dtype == torch.float32
    assert torch.allclose(out, (ref.float() / 255 - mean) / std, atol=1e-5)
    with pytest.raises(ConfigError, match="needs the dataset mean and std"):
        build_augment({"autoaugment": "imagenet"}, 10)(x, torch.zeros(6, dtype=torch.long), gen())


def test_policy_without_torchvision_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", None)
    with pytest.raises(ConfigError, match=r"augment.randaugment needs torchvision: pip install 'kdlab\[vision\]' torch==2.14.1 torchvision==0.29.1"):
        build_augment({"randaugment": {"n": 1, "m": 5}}, 10)
