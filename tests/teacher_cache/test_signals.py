"""The signal store: computed once, resumable, verified on reuse, memory-mapped, no pickle."""

import json

import numpy as np
import pytest
import torch

from kdlab.errors import ConfigError
from kdlab.teacher_cache.signals import META_FILE, signal_store


def _compute(calls):
    def compute(index, view):
        calls.append(len(index))
        x = index.float()[:, None] * 10 + view.float()[:, None]
        return {"logits": x.expand(-1, 3) + torch.arange(3.0), "feature:f": (x * 0.01).expand(-1, 6).reshape(-1, 2, 3)}
    return compute


SHAPES = {"logits": ((3,), "float32"), "feature:f": ((2, 3), "bfloat16")}


def test_store_holds_each_sample_and_view_and_is_reused(tmp_path):
    calls = []
    store = signal_store(tmp_path, {"k": 1}, samples=37, views=3, shapes=SHAPES, compute=_compute(calls),
                         device=torch.device("cpu"), batch_size=8, shard=10, log=lambda m: None)
    assert store.computed and sum(calls) == 37 * 3
    rows = store.rows(torch.tensor([36, 0, 5]), torch.tensor([2, 1, 0]))
    assert torch.equal(rows["logits"], torch.tensor([[362.0, 363, 364], [1, 2, 3], [50, 51, 52]]))
    assert rows["feature:f"].dtype == torch.bfloat16
    assert torch.allclose(rows["feature:f"].float()[:, 0, 0], torch.tensor([3.62, 0.01, 0.5]), rtol=2 ** -8)
    assert isinstance(store.arrays["logits"], np.memmap)
    calls.clear()
    again = signal_store(tmp_path, {"k": 1}, samples=37, views=3, shapes=SHAPES, compute=_compute(calls),
                         device=torch.device("cpu"), log=lambda m: None)
    assert not again.computed and calls == []
    np.load(again.path / "logits.npy", allow_pickle=False)  # readable without pickle


def test_a_changed_file_is_not_trusted(tmp_path):
    store = signal_store(tmp_path, {"k": 2}, samples=5, views=1, shapes=SHAPES, compute=_compute([]),
                         device=torch.device("cpu"), log=lambda m: None)
    a = np.load(store.path / "logits.npy", mmap_mode="r+")
    a[0, 0, 0] = 99.0
    a.flush()
    del a
    calls = []
    again = signal_store(tmp_path, {"k": 2}, samples=5, views=1, shapes=SHAPES, compute=_compute(calls),
                         device=torch.device("cpu"), log=lambda m: None)
    assert again.computed and calls and again.rows(torch.tensor([0]), torch.tensor([0]))["logits"][0, 0] == 0.0


def test_an_interrupted_computation_resumes_at_the_first_shard_not_done(tmp_path):
    calls = []
    base = _compute(calls)

    def dying(index, view):
        if index[0] >= 20:
            raise KeyboardInterrupt
        return base(index, view)

    with pytest.raises(KeyboardInterrupt):
        signal_store(tmp_path, {"k": 3}, samples=40, views=1, shapes=SHAPES, compute=dying,
                     device=torch.device("cpu"), batch_size=10, shard=10, log=lambda m: None)
    assert not (tmp_path / "signals-x").exists()
    assert not any(p.name.endswith(META_FILE) for p in tmp_path.rglob("*"))  # nothing looks complete
    calls.clear()
    store = signal_store(tmp_path, {"k": 3}, samples=40, views=1, shapes=SHAPES, compute=base,
                         device=torch.device("cpu"), batch_size=10, shard=10, log=lambda m: None)
    assert sum(calls) == 20  # shards 0 and 1 were done and kept
    assert torch.equal(store.rows(torch.tensor([39]), torch.tensor([0]))["logits"], torch.tensor([[390.0, 391, 392]]))
    meta = json.loads((store.path / META_FILE).read_text())
    assert meta["key"] == {"k": 3} and set(meta["signals"]) == {"logits", "feature:f"}


def test_a_store_over_budget_is_refused_in_one_line_naming_what_fits(tmp_path):
    with pytest.raises(ConfigError, match=r"would take .* GB.*teacher_signals.views=\d+"):
        signal_store(tmp_path, {"k": 4}, samples=1000, views=16, shapes={"logits": ((1000,), "float32")},
                     compute=_compute([]), device=torch.device("cpu"), max_gb=0.01, log=lambda m: None)
    assert not [p for p in tmp_path.glob("signals-*") if p.suffix != ".lock"]  # the lock file stays, by design
