import pytest
import torch

from kdlab import ConfigError
from kdlab.data import BatchIndexer, TensorData, load_dataset
from kdlab.data.tensors import carve_validation


def test_batch_indexer_covers_every_sample_once_and_reshuffles():
    idx = BatchIndexer(10, 3, seed=5)
    first = list(idx.epoch())
    assert [len(b) for b in first] == [3, 3, 3, 1]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    second = torch.cat(list(idx.epoch()))
    assert not torch.equal(torch.cat(first), second)


def test_batch_indexer_order_depends_only_on_seed():
    a = [torch.cat(list(BatchIndexer(100, 7, seed=1).epoch())) for _ in range(2)]
    torch.manual_seed(123)  # the global RNG must not matter
    b = torch.cat(list(BatchIndexer(100, 7, seed=1).epoch()))
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], b)
    assert not torch.equal(a[0], torch.cat(list(BatchIndexer(100, 7, seed=2).epoch())))


def test_drop_last():
    idx = BatchIndexer(10, 3, seed=0, drop_last=True)
    assert len(idx) == 3 and [len(b) for b in idx.epoch()] == [3, 3, 3]


def test_carve_validation_is_disjoint_and_seeded():
    data = TensorData(torch.arange(100).float().view(100, 1, 1, 1), torch.arange(100))
    train, val = carve_validation(data, 0.2, seed=0)
    assert len(train) == 80 and len(val) == 20
    assert set(train.y.tolist()).isdisjoint(val.y.tolist())
    _, val2 = carve_validation(data, 0.2, seed=0)
    assert torch.equal(val.y, val2.y)
    with pytest.raises(ConfigError, match="val_fraction"):
        carve_validation(data, 1.0, seed=0)


def test_digits_embedded_default():
    data = load_dataset("digits", val_fraction=0.1)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.in_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.test) == pytest.approx(360, abs=5)
    # stratified split: every class is in the test set in proportion
    counts = torch.bincount(data.test.y, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    # normalization statistics come from the training part only
    assert abs(float(data.train.x.mean())) < 1e-4


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'mnsit'; choose one of: cifar10, cifar100, digits, fashion-mnist, kmnist, mnist"):
        load_dataset("mnsit")


def test_digits_split_is_stratified_and_fixed():
    """scikit-learn's stratified split: 20 % of every class is test, the same images as
    ``train_test_split(stratify=y, test_size=0.2, random_state=0)``, never dependent on a run's seed."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from kdlab.data.digits import split_indices

    target = load_digits().target
    data = load_dataset("digits")
    per_class = np.bincount(target, minlength=10)
    test_share = np.bincount(data.test.y.numpy(), minlength=10) / per_class
    train_share = np.bincount(data.train.y.numpy(), minlength=10) / per_class
    assert np.allclose(test_share, 0.2, atol=0.02) and np.allclose(train_share + test_share, 1.0)
    train_idx, test_idx = split_indices(target)
    _, sk_test = train_test_split(np.arange(len(target)), test_size=0.2, stratify=target, random_state=0)
    assert np.array_equal(test_idx, np.sort(sk_test))
    assert np.intersect1d(train_idx, test_idx).size == 0 and len(train_idx) + len(test_idx) == len(target)
    assert np.array_equal(data.test.y.numpy(), target[test_idx])
    assert torch.equal(load_dataset("digits", seed=5).test.y, data.test.y)
