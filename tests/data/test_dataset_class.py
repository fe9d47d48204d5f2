"""A user's torch.utils.data.Dataset class registered as a dataset: adapted into in-memory tensors, or refused in one line."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from kdlab.data import RawData, load_dataset
from kdlab.data.registry import DATASETS, DatasetRegistry
from kdlab.errors import ConfigError


class Squares(Dataset):
    """torchvision-style: (root, train, download); PIL images in, class names on the class."""

    classes = ["dark", "light"]
    built = []

    def __init__(self, root, train=True, download=False, transform=None):
        Squares.built.append((root, train, download))
        g = torch.Generator().manual_seed(0 if train else 1)
        self.x = torch.randint(0, 256, (12 if train else 6, 5, 5), generator=g, dtype=torch.uint8)
        self.y = (self.x.float().mean((1, 2)) > 127).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return Image.fromarray(self.x[i].numpy()), int(self.y[i])


class FloatSplit(Dataset):
    """split='train'/'test', numpy float images (C, H, W), tensor labels, no root."""

    def __init__(self, split):
        self.n = 8 if split == "train" else 4
        self.offset = 0 if split == "train" else 100

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.full((1, 3, 3), (i + self.offset) / 200, dtype=np.float64), torch.tensor(i % 3)


@pytest.fixture
def registry(monkeypatch):
    reg = DatasetRegistry("dataset")
    monkeypatch.setattr("kdlab.data.DATASETS", reg)
    return reg


def test_a_dataset_class_is_read_into_tensors_once_per_split(registry, tmp_path):
    Squares.built.clear()
    assert registry.register("squares")(Squares) is Squares  # the user's class comes back unchanged
    raw = registry.get("squares")(tmp_path, False)
    assert isinstance(raw, RawData) and Squares.built == [(str(tmp_path), True, False), (str(tmp_path), False, False)]
    train, test = Squares(tmp_path, True), Squares(tmp_path, False)
    assert torch.equal(raw.train_x, train.x) and torch.equal(raw.train_y, train.y)  # PIL round trip is exact for uint8
    assert torch.equal(raw.test_x, test.x) and torch.equal(raw.test_y, test.y)
    assert raw.train_x.dtype == torch.uint8 and raw.pixel_max == 255.0 and raw.classes == ["dark", "light"]
    data = load_dataset("squares", tmp_path, download=False)  # through kdlab's normal path: normalized (N, 1, 5, 5)
    assert data.train.x.shape == (12, 1, 5, 5) and data.num_classes == 2


def test_split_argument_float_images_and_default_class_names(registry):
    registry.register("floats")(FloatSplit)
    raw = registry.get("floats")(None, True)
    assert raw.train_x.dtype == torch.float32 and raw.train_x.shape == (8, 1, 3, 3) and raw.pixel_max == 1.0
    assert raw.test_x[2, 0, 0, 0].item() == pytest.approx(102 / 200)
    assert raw.train_y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1] and raw.classes == ["0", "1", "2"]


class NoSplit(Dataset):
    def __init__(self, path, mode="fit"):
        pass


def _not_a_loader(path):
    return None


@pytest.mark.parametrize("obj,message", [
    (NoSplit, "cannot build the train and test splits of NoSplit(path, mode='fit')"),
    (_not_a_loader, "_not_a_loader(path) cannot be called as loader(data_dir, download)"),
    (FloatSplit("train"), "got a FloatSplit instance"),
])
def test_what_cannot_be_adapted_is_refused_in_one_line_naming_the_signature(registry, obj, message):
    with pytest.raises(ConfigError) as info:
        registry.register("x")(obj)
    text = str(info.value)
    assert message in text and "loader(data_dir, download) -> kdlab.data.RawData" in text and "train=True/False" in text
    assert "\n" not in text and "x" not in registry


def test_a_loader_returning_something_else_is_one_line(registry):
    registry.register("odd")(lambda data_dir, download: {"x": 1})
    with pytest.raises(ConfigError, match="the registered loader returned a dict, not kdlab.data.RawData"):
        load_dataset("odd")


def test_the_global_registry_adapts_classes_too():
    assert isinstance(DATASETS, DatasetRegistry) and "digits" in DATASETS
