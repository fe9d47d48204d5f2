"""Runs several kdlab commands in one torchrun launch, in one process group.

``python -m torch.distributed.run --nproc_per_node 2 ddp_driver.py PLAN.json``; PLAN is a list of
``[expected_exit_code, [kdlab arguments...]]``, or ``[0, ["@api", OUT]]`` for :func:`kdlab.distill` with
a user's models and Dataset (FitNets: hooks, adapters, the teacher online), or ``[0, ["@store", OUT]]``
for a teacher signal store computed by both processes. Exits 1 at the first
command whose code differs, or when the processes end with different student weights.
Starting torch costs seconds per process, so tests/train/test_distributed.py launches this once.
"""

import json
import sys
from pathlib import Path

import torch

import kdlab
from kdlab.cli import main
from kdlab.train import distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.user_models
from tests.user_models import TinyCNN  # noqa: E402


def api_run(out: str) -> int:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    teacher, student = TinyCNN(4), TinyCNN(2)
    result = kdlab.distill(student, teacher, data, data, method="fitnets", pairs={"block2": "block2"}, weight=1.0,
                           epochs=2, batch_size=32, out=out, progress=False)
    flat = torch.cat([p.detach().reshape(-1) for p in [*result.student.parameters(), *result.method.parameters()]])
    spread = flat.clone()
    torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX)
    return 0 if torch.equal(spread, flat) else 3  # every process holds the same student and adapters

def store_run(out: str) -> int:
    """Both processes compute a signal store of 5 shards together: each its own shards (rank, rank + 2, …),
    recorded in the store itself; the test reads it back in one process."""
    from kdlab.teacher_cache.signals import signal_store

    rank = torch.distributed.get_rank()

    def compute(index, view):
        return {"value": (index * 10 + view).float().unsqueeze(1), "rank": torch.full((len(index), 1), float(rank))}

    store = signal_store(Path(out), {"test": "ranks"}, samples=40, views=2, shapes={"value": ((1,), "float32"),
                         "rank": ((1,), "float32")}, compute=compute, device=torch.device("cpu"), batch_size=3, shard=8,
                         log=lambda m: None)
    return 0 if store.computed else 4


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        plan = json.load(fh)
    # One group for all commands (each command's own session then joins it): a group re-created in the
    # same launch could meet the previous one's rendezvous keys in torchrun's store.
    with distributed.session():
        for expected, argv in plan:
            code = api_run(argv[1]) if argv[0] == "@api" else store_run(argv[1]) if argv[0] == "@store" else main(argv)
            if code != expected:
                print(f"ddp_driver: `kdlab {' '.join(argv)}` exited {code}, expected {expected}", file=sys.stderr, flush=True)
                break
        else:
            code = expected = 0
    distributed.leave(0 if code == expected else 1)  # the CLI's own exit under torchrun
