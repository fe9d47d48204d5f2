"""Runs several kdlab commands in one torchrun launch, in one process group.

``python -m torch.distributed.run --nproc_per_node 2 ddp_driver.py PLAN.json``; PLAN is a list of
``[expected_exit_code, [kdlab arguments...]]``. Exits 1 at the first command whose code differs.
Starting torch costs seconds per process, so tests/train/test_distributed.py launches this once.
"""

import json
import sys

from kdlab.cli import main
from kdlab.train import distributed

if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        plan = json.load(fh)
    # One group for all commands (each command's own session then joins it): a group re-created in the
    # same launch could meet the previous one's rendezvous keys in torchrun's store.
    with distributed.session():
        for expected, argv in plan:
            code = main(argv)
            if code != expected:
                print(f"ddp_driver: `kdlab {' '.join(argv)}` exited {code}, expected {expected}", file=sys.stderr, flush=True)
                sys.exit(1)
