import pickle

import pytest
import torch

from kdlab import CheckpointError
from kdlab.config import OptimizerConfig, SchedulerConfig
from kdlab.recipes import load_recipe
from kdlab.data import load_dataset
from kdlab.models import build_model
from kdlab.pipeline import prepare_data, run_teacher
from kdlab.train import load_checkpoint, save_checkpoint
from kdlab.train.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler


class Payload:
    """Unpickling this creates the marker file: proof that code in a checkpoint ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_files(tmp_path):
    marker = tmp_path / "PWNED"
    zip_pt = tmp_path / "evil.pt"
    torch.save({"format": "kdlab-checkpoint-v1", "state_dict": {}, "x": Payload(marker)}, zip_pt)
    legacy = tmp_path / "legacy.pt"
    torch.save({"x": Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=4))
    return marker, [zip_pt, legacy, plain]


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker, files = evil_files(tmp_path)
    for path in files:
        with pytest.raises(CheckpointError, match=r"contains Python objects that could run code when loaded \(.*open.*\)"):
            load_checkpoint(path)
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match="corrupt or not a kdlab checkpoint"):
        load_checkpoint(junk)


@pytest.mark.parametrize("opt", OPTIMIZERS.names())
def test_everything_kdlab_saves_loads_weights_only(tmp_path, opt):
    """Optimizer, every scheduler and both RNG states are plain tensors/numbers/dicts."""
    model = build_model("mlp", (1, 8, 8), 10, {"hidden": [4]})
    optimizer = build_optimizer(model, OptimizerConfig(name=opt))
    model(torch.randn(3, 1, 8, 8)).sum().backward()
    optimizer.step()
    for name in SCHEDULERS.names():
        scheduler = build_scheduler(optimizer, SchedulerConfig(name=name, milestones=[2]), 5)  # multistep needs them
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        save_checkpoint(tmp_path / "c.pt", {
            "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "shuffle_rng": torch.Generator().manual_seed(1).get_state(), "torch_rng": torch.get_rng_state(),
        })
        plain = torch.load(tmp_path / "c.pt", weights_only=True)
        assert plain["optimizer"]["param_groups"][0]["lr"] == optimizer.param_groups[0]["lr"]


def test_checkpoint_records_role_and_input_normalisation(tmp_path):
    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[16]", "teacher.train.epochs=1"])
    data = prepare_data(recipe)
    run_teacher(recipe, data, out=tmp_path / "t", progress=False)
    for name in ("best.pt", "last.pt"):
        ck = torch.load(tmp_path / "t" / name, weights_only=True)  # what a user without kdlab does
        assert ck["role"] == "teacher"
        spec = ck["input"]
        assert spec["shape"] == [1, 8, 8] and spec["pixel_max"] == 16.0
    # The recorded recipe turns raw pixels into exactly the tensors kdlab trained on.
    from sklearn.datasets import load_digits

    pixels = torch.from_numpy(load_digits().images).float()  # 0..16, the dataset's own scale
    fed = ((pixels / spec["pixel_max"] - spec["mean"]) / spec["std"]).reshape(-1, *spec["shape"])
    ours = torch.cat([data.train.x, data.test.x])
    assert fed.shape == ours.shape
    # Every image kdlab holds in memory is one of the fed images, to float precision.
    nearest = torch.cdist(ours.flatten(1), fed.flatten(1), compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert float(nearest.max()) < 1e-4


def test_mnist_normalisation_reproduced_from_idx_bytes(real_data):
    data = load_dataset("mnist", real_data, download=False)
    from kdlab.data.mnist_family import MNIST, locate
    from kdlab.data.idx import read_idx
    from kdlab.train.checkpoint import model_payload
    from kdlab.data import input_spec

    spec = model_payload(torch.nn.Linear(1, 1), "mlp", {}, data.in_shape, 10, "student", input_spec(data))["input"]
    _, found = locate(MNIST, real_data)
    raw = torch.from_numpy(read_idx(found["test_images"], 3).copy())
    fed = ((raw.float() / spec["pixel_max"] - spec["mean"]) / spec["std"]).reshape(-1, *spec["shape"])
    assert spec["pixel_max"] == 255.0 and torch.allclose(fed, data.test.x, atol=1e-5)
