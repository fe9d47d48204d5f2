"""The full Hinton, Vinyals & Dean (2015) section-3 reproduction, its results saved beside this file.

    OMP_NUM_THREADS=1 python benchmarks/hinton2015.py --data-dir ../shared/data [--seeds 3]

Runs ``kdlab reproduce hinton2015`` with a fresh teacher cache (so the wall time includes the
teachers) and copies ``results.json`` and ``report.md`` into ``benchmarks/hinton2015/``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from kdlab.cli import main as kdlab


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        argv = ["reproduce", "hinton2015", "--seeds", str(args.seeds), "--out", str(out), "--teacher-cache", str(Path(tmp) / "teachers")]
        code = kdlab(argv + (["--data-dir", args.data_dir] if args.data_dir else []))
        if code == 0:
            dest = Path(__file__).resolve().parent / "hinton2015"
            dest.mkdir(exist_ok=True)
            for name in ("results.json", "report.md"):
                shutil.copy(out / name, dest / name)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
