"""CNN students in `kdlab compare`: the stacked (vmap) grid against the same students one by one.

    OMP_NUM_THREADS=1 python benchmarks/batched_cnn.py --data-dir ../shared/data [--methods hinton,at,rkd,dkd]

`fashion-cnn` with random crop (2 px) + flip on the first 6,000 training images, the study's stored
teacher signal (2 views), 3 seeds, 2 student epochs; per method one `compare` (scratch + the method)
with `batched=True` and one with `batched=False`, alternating, 2 rounds (the first round also
computes each store, so read the second). Both give the same numbers (tests/study/test_compare.py);
only the time differs. Wall and CPU seconds of each whole study, test-set evaluation included.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from kdlab.device import cpu_model
from kdlab.pipeline import load_teacher, prepare_data, run_teacher
from kdlab.recipes import load_recipe
from kdlab.study.compare import compare
from kdlab.teacher_cache import cached_teacher

SECTIONS = ["distill.at.pairs={features.2: features.2}", "distill.dkd={warmup: 1}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("KDLAB_DATA_DIR"), help="folder with fashion-mnist/")
    ap.add_argument("--methods", default="hinton,at,rkd,dkd")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    base = ([f'dataset.data_dir="{args.data_dir}"'] if args.data_dir else []) + [
        "augment.crop=2", "augment.flip=true", "teacher.train.epochs=4", "student.train.epochs=2"]
    cache = Path(tempfile.mkdtemp(prefix="kdlab-batched-cnn-"))
    recipe = load_recipe("fashion-cnn", base)
    data = prepare_data(recipe)
    data.train = data.train.subset(torch.arange(6000))
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.2f}")
    cached_teacher(recipe, data, cache, False, print, train=run_teacher, load=load_teacher)
    for rnd in range(args.rounds):
        for m in args.methods.split(","):
            for batched in (True, False):
                r = load_recipe("fashion-cnn", base + SECTIONS)
                w, c = time.perf_counter(), time.process_time()
                res = compare(r, None, seeds=3, methods=m, data=data, teacher_cache=cache, progress=False,
                              log=lambda x: None, profile=False, batched=batched)
                print(f"round {rnd + 1} {m} {'batched' if batched else 'one by one'}: wall {time.perf_counter() - w:.1f} s, "
                      f"CPU {time.process_time() - c:.1f} s ({res.mode})", flush=True)


if __name__ == "__main__":
    main()
