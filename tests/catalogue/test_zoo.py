"""Bad-input catalogue: library models by name and CIFAR files, through the real CLI."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from tests.catalogue.harness import SRC, check_bad_input
from tests.data.test_cifar import write_cifar
from tests.optional import require

from kdlab.data import cifar


def shadow(tmp_path: Path, module: str) -> dict:
    """PYTHONPATH that makes ``import module`` fail as if it were not installed."""
    folder = tmp_path / "shadow"
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    return {"PYTHONPATH": os.pathsep.join([SRC, str(folder)])}


def test_missing_timm_names_the_pip_install(tmp_path):
    env = shadow(tmp_path, "timm")
    work = tmp_path / "work"
    work.mkdir()
    check_bad_input(["train-teacher", "mnist-cnn", "--set", "teacher.model.name=timm:resnet50", "--out", "run"],
                    work, ["model 'timm:resnet50' needs timm: pip install 'kdlab[vision]'"], env=env)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_file_is_refused_unrun(tmp_path):
    data = tmp_path / "data"
    write_cifar(data, cifar.CIFAR10)
    marker = tmp_path / "pwned"
    (data / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    work = tmp_path / "work"
    work.mkdir()
    check_bad_input(["train-teacher", "--dataset", "cifar10", "--data-dir", str(data), "--no-download", "--out", "run"],
                    work, ["data_batch_2 is not a CIFAR python pickle", "refused global posix.system"
                           if os.name == "posix" else "refused global"], watch=[data])
    assert not marker.exists()


def test_missing_cifar_names_folder_and_files(tmp_path):
    check_bad_input(["train-teacher", "--dataset", "cifar100", "--data-dir", "data", "--no-download", "--out", "run"],
                    tmp_path, ["cifar100: train, test, meta not found in data/cifar-100-python", "cifar-100-python.tar.gz"])


@pytest.mark.parametrize("model,needles", [
    ('{name: "torchvision:resnet19"}', ["unknown model 'torchvision:resnet19'; did you mean torchvision:resnet18"]),
    ('{name: "torchvision:resnet18", weights: nowhere.pt}', ["weights file nowhere.pt not found"]),
])
def test_library_model_mistakes(tmp_path, model, needles):
    require("torchvision")
    (tmp_path / "r.yaml").write_text(f"dataset: {{name: digits}}\nteacher:\n  model: {model}\n")
    check_bad_input(["train-teacher", "r.yaml", "--epochs", "1", "--out", "run"], tmp_path, needles)
