"""From parsed arguments to a validated recipe and run folder: flags as recipe overrides, and the
rules for ``--out``, ``--resume`` and ``--overwrite``.

Kept apart from argument parsing and printing: every check that may refuse a training command
happens here, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .errors import ConfigError, KDLabError

FLAG_KEYS: Dict[str, str] = {
    "dataset": "dataset.name",
    "data_dir": "dataset.data_dir",
    "val_fraction": "dataset.val_fraction",
    "seed": "seed",
    "device": "device",
    "method": "distill.method",
    "loss": "distill.loss",
    "temperature": "distill.temperature",
    "hard_weight": "distill.hard_weight",
    "soft_weight": "distill.soft_weight",
    "teacher_epochs": "teacher.train.epochs",
    "student_epochs": "student.train.epochs",  # demo/compare/tune: --epochs (alias --student-epochs)
    "student_batch_size": "student.train.batch_size",  # demo/compare/tune: --batch-size
    "student_lr": "student.train.optimizer.lr",  # demo/compare/tune: --lr
}
ROLE_FLAG_KEYS: Dict[str, str] = {"epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.optimizer.lr"}


def recipe_overrides(args: argparse.Namespace, role: Optional[str]) -> List[str]:
    out: List[str] = []
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out.append(f"{key}={value}" if dest != "data_dir" else f"{key}={json.dumps(value)}")  # any path, quoted
    if role is not None:
        for dest, key in ROLE_FLAG_KEYS.items():
            value = getattr(args, dest, None)
            if value is not None:
                out.append(f"{role}.{key}={value}")
    if getattr(args, "no_download", False):
        out.append("dataset.download=false")
    if getattr(args, "tensorboard", None) is not None:  # --tensorboard / --no-tensorboard
        for r in [role] if role is not None else ["teacher", "student"]:
            out.append(f"{r}.train.tensorboard={str(args.tensorboard).lower()}")
    return out + list(args.overrides)


def recipe_from_args(args: argparse.Namespace, role: Optional[str], default: str = "mnist-mlp"):
    from .recipes import load_recipe

    return load_recipe(args.recipe or default, recipe_overrides(args, role), getattr(args, "imports", None) or ())


RESUME_HELP = (
    "continue the run in --out from its last.pt with the run's own recorded config; the command line may differ "
    "from it only in --epochs / {role}.train.epochs (more epochs extend a finished run, fewer than done are refused), "
    "--data-dir / --no-download (data moved) and --progress; any other difference is refused"
)
RUN_KINDS = {"teacher": "train-teacher", "scratch": "train-student", "distill": "distill"}


def _check_resume(args: argparse.Namespace) -> None:
    if getattr(args, "resume", False) and not args.out:
        raise KDLabError("--resume needs --out pointing at the run folder to continue")


def run_recipe(args: argparse.Namespace, role: str, kind: str):
    """The recipe to train and the --out folder, after every check that may refuse the command.

    Nothing is written before this returns (``--overwrite`` then moves the old run aside, printing where).
    A resume uses the run's own config.yaml; see RESUME_HELP for what may differ. ``--resume`` of a run
    that already trained every epoch asked of it sets ``args.nothing_to_resume`` to the line to print.
    """
    # start-up time: torch and the recipe loader load when a run command runs, not for --help
    from .resume import resume_recipe
    from .train import distributed
    from .train.rundir import check_new_run_folder, epochs_done, move_aside, read_run_info, run_files
    from .utils import check_output_location

    _check_resume(args)
    if args.resume:
        if args.overwrite:
            raise KDLabError("--resume continues the run in --out and --overwrite moves it aside; pass only one of them")
        path = check_output_location(args.out, "--out")
        if not (path / "config.yaml").is_file():
            raise KDLabError(f"--out {path} holds no run to resume (no config.yaml); drop --resume to start a new run there")
        started_as = read_run_info(path).get("role")
        if started_as in RUN_KINDS and started_as != kind:
            raise KDLabError(f"{path} is a {started_as} run; resume it with `kdlab {RUN_KINDS[started_as]} --resume --out {path}`")
        recipe = resume_recipe(path, role, args.recipe, recipe_overrides(args, role))
        done, epochs = epochs_done(path), getattr(recipe, role).train.epochs
        if epochs < done:
            raise ConfigError(f"cannot resume {path} with {role}.train.epochs={epochs}: it has already trained {done} epochs; "
                              f"pass --epochs {done} or more")
        # Not an error: the run still goes through every check (and repairs its files from last.pt),
        # trains no epoch, and the command says so after its report.
        args.nothing_to_resume = (f"run folder {path} already finished {done}/{epochs} epochs; nothing to resume "
                                  f"(pass --epochs {done + 1} or more to train it further)") if epochs == done else None
        distributed.check_batch_size(getattr(recipe, role).train.batch_size, where=f"{role}.train.batch_size")
        distributed.barrier()  # under torchrun: every process has read the run before rank 0 writes to it
        return recipe, str(path)
    recipe = recipe_from_args(args, role)
    distributed.check_batch_size(getattr(recipe, role).train.batch_size, where="--batch-size")
    if not args.out:
        check_output_location(recipe.out_dir, "output folder (recipe out_dir)")
        return recipe, None
    path = check_output_location(args.out, "--out")
    if run_files(path):
        if not args.overwrite:
            check_new_run_folder(path)  # raises: says how to resume or overwrite
        distributed.barrier()  # under torchrun: every process has looked before rank 0 moves the old run
        if distributed.is_main():
            print(f"kdlab: --overwrite: moved the existing run {path} aside to {move_aside(path)}", file=sys.stderr)
        distributed.barrier()
    return recipe, str(path)


def resume_teacher(args: argparse.Namespace) -> str:
    """The teacher checkpoint of the distill run being resumed: the one recorded in its run.json."""
    from .train.rundir import read_run_info  # start-up time: torch loads when a run command runs
    from .utils import file_digest  # start-up time: as above

    info = read_run_info(Path(args.out))
    several, digests = info.get("teacher_checkpoints"), info.get("teacher_sha256s")
    if isinstance(several, list) and several:  # a multi-teacher run: the same checkpoints, unchanged
        if args.teacher:
            raise KDLabError(f"{args.out} was distilled from {len(several)} teachers; omit --teacher to resume with them")
        for path, digest in zip(several, digests or [None] * len(several)):
            if not os.path.isfile(path):
                raise KDLabError(f"teacher checkpoint {path} of {args.out} is missing; restore it or start a new run")
            if digest and file_digest(path) != digest:
                raise KDLabError(f"teacher checkpoint {path} has changed since {args.out} was started (sha256 differs); "
                                 "restore that file or start a new run")
        return several  # type: ignore[return-value]
    recorded, digest = info.get("teacher_checkpoint"), info.get("teacher_sha256")
    if args.teacher and recorded:
        same = (os.path.samefile(args.teacher, recorded) if os.path.exists(args.teacher) and os.path.exists(recorded)
                else Path(args.teacher).resolve() == Path(recorded).resolve())
        if not same:
            raise KDLabError(f"--teacher {args.teacher} is not the teacher {args.out} was started with ({recorded}); "
                             "omit --teacher to use that one, or start a new run")
    teacher = args.teacher or recorded
    if not teacher:
        raise KDLabError(f"{args.out}/run.json records no teacher checkpoint; pass --teacher CHECKPOINT (the teacher the run started with)")
    if digest and os.path.isfile(teacher) and file_digest(teacher) != digest:
        raise KDLabError(f"teacher checkpoint {teacher} has changed since {args.out} was started (sha256 differs); "
                         "restore that file or start a new run")
    return teacher
