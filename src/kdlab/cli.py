"""Command-line interface. Parsing and printing only; the work is done by :mod:`kdlab.pipeline`.

Every user mistake ends as exit code 2 with exactly one line on stderr. Each command imports what
it needs inside its own function (marked "start-up time"), so a command never waits for another's modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import __version__
from .cli_recipe import RESUME_HELP, recipe_from_args, resume_teacher, run_recipe
from .cli_types import MAX_SEEDS, MAX_TRIALS, finite_float, float_list, int_in, percent
from .errors import KDLabError
from .study.demo import DEMO_SEEDS

DEFAULT_LOSSES = "hinton,softmax-input,extra-T"
EPILOG = "Recipes: a bundled name (see `kdlab recipes`) or a path to a YAML file. Docs: README.md."


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _common(p: argparse.ArgumentParser, role: Optional[str], students: str = "") -> None:
    """The flags every training command shares. ``role``: the model a train/distill command trains;
    None for the studies (demo, compare, tune), where ``students`` says which students the
    student flags set (their teacher has --teacher-epochs)."""
    p.add_argument("recipe", nargs="?", default=None, help="bundled recipe name or YAML path (default: mnist-mlp; demo: the embedded dataset)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="dataset name: digits (embedded), mnist, fashion-mnist, kmnist")
    g.add_argument("--data-dir", help="folder holding <dataset>/ with the four IDX .gz files (default: $KDLAB_DATA_DIR, then ~/.cache/kdlab)")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    g.add_argument("--val-fraction", type=finite_float, help="fraction of the training set held out for validation")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help="seed for weights, shuffling and dropout (default: from the recipe)")
    g.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so the models/datasets/losses/methods it registers can be named (repeatable; "
                        "recorded in the recipe as imports)")
    g.add_argument("--device", help="where to train: cpu (default), cuda, cuda:N, or auto (cuda when available)")
    g.add_argument("--out", help="run folder to write (default: runs/<recipe>-<kind>-<timestamp>)")
    if role is not None:
        g.add_argument("--epochs", type=int, help=f"{role} training epochs")
        g.add_argument("--batch-size", type=int, help=f"{role} batch size")
        g.add_argument("--lr", type=finite_float, help=f"{role} learning rate")
        g.add_argument("--resume", action="store_true", help=RESUME_HELP.format(role=role))
        g.add_argument("-v", "--verbose", action="store_true",
                       help="print what kdlab chose for the run and why: the training step (closed form, autograd, ...), "
                            "where the teacher's outputs come from, threads and precision (also recorded in run.json)")
        g.add_argument("--overwrite", action="store_true",
                       help="if --out already holds a run, move it aside to <out>.replaced-<timestamp> and start afresh")
    else:  # the same names as train-student and distill: --epochs is the student's everywhere
        g.add_argument("--epochs", "--student-epochs", dest="student_epochs", type=int, metavar="N",
                       help=f"student training epochs ({students}); --student-epochs is the same flag")
        g.add_argument("--batch-size", dest="student_batch_size", type=int, metavar="N", help=f"student batch size ({students})")
        g.add_argument("--lr", dest="student_lr", type=finite_float, metavar="LR", help=f"student learning rate ({students})")
        g.add_argument("--teacher-epochs", type=int, help="teacher training epochs (when the teacher is trained for the cache)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe value, e.g. --set teacher.model.dropout=0.3 (repeatable)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars (default: only when stderr is a terminal)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="write TensorBoard event files into the run folder (default: the recipe's train.tensorboard, on; "
                        "needs the tensorboard package)")


def _distill_flags(p: argparse.ArgumentParser, loss: bool = True) -> None:
    g = p.add_argument_group("distillation (total = hard_weight*CE + soft_weight*soft_loss)")
    if loss:
        g.add_argument("--loss", help="soft loss coding (default: hinton = KL(batchmean) x T^2); see `kdlab losses`")
    g.add_argument("-T", "--temperature", type=finite_float, help="softmax temperature T > 0")
    g.add_argument("--hard-weight", type=finite_float, help="weight of the hard-label cross-entropy")
    g.add_argument("--soft-weight", type=finite_float, help="weight of the soft (teacher) term")


IMPORT_HELP = "import MODULE first, so what it registers is listed or can be named (repeatable)"


def _imports(p: argparse.ArgumentParser, help: str = IMPORT_HELP) -> None:
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=help)


def _import_user(args: argparse.Namespace) -> None:
    """The user's modules (``--import``) for a command that takes no recipe: its registrations are listed or used."""
    # start-up time: loaded only by this command
    from .recipes import import_user_modules

    import_user_modules(args.imports)


def _report(result) -> None:
    # start-up time: loaded only by this command
    from .train.distributed import is_main

    if not is_main():  # under torchrun: printed once, by rank 0
        return
    final, best = result.fit.final, result.fit.best
    print(f"{result.role}: final test acc {100 * result.final_acc:.2f}% (epoch {final['epoch']}), "
          f"best {result.fit.best_metric} {100 * best[result.fit.best_metric]:.2f}% (epoch {best['epoch']}), "
          f"{result.parameters:,} parameters")
    if result.path is not None:
        print(f"run folder: {result.path}")


def cmd_train_teacher(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .pipeline import run_teacher

    recipe, out = run_recipe(args, "teacher", "teacher")
    _report(run_teacher(recipe, out=out, progress=args.progress, resume=args.resume, verbose=args.verbose))
    _nothing_resumed(args)
    return 0


def cmd_train_student(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .pipeline import run_student

    recipe, out = run_recipe(args, "student", "scratch")
    _report(run_student(recipe, out=out, progress=args.progress, resume=args.resume, verbose=args.verbose))
    _nothing_resumed(args)
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .pipeline import run_distill

    if args.teacher and (args.teacher_epochs is not None or args.teacher_cache):
        raise KDLabError("--teacher-epochs and --teacher-cache apply only when the teacher comes from the cache; "
                         "drop them, or drop --teacher to use the cached (or newly trained) recipe teacher")
    recipe, out = run_recipe(args, "student", "distill")
    teacher = resume_teacher(args) if args.resume else args.teacher
    _report(run_distill(recipe, teacher, out=out, progress=args.progress, resume=args.resume,
                        teacher_cache=args.teacher_cache, log=_say, verbose=args.verbose,
                        teacher_online=args.teacher_online))
    _nothing_resumed(args)
    return 0


def _nothing_resumed(args: argparse.Namespace) -> None:
    """After a ``--resume`` that had no epoch left to train: one line saying so (else a silent exit 0)."""
    if getattr(args, "nothing_to_resume", None):
        _say(args.nothing_to_resume)


def _say(line: str) -> None:
    # start-up time: loaded only by this command
    from .train.distributed import is_main

    if is_main():
        print(line, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .recipes import bundled_recipes
    from .study.demo import run_demo

    dataset = args.dataset or "digits"
    default = f"{dataset}-mlp" if f"{dataset}-mlp" in bundled_recipes() else "mnist-mlp"
    recipe = recipe_from_args(args, None, default)
    st = recipe.student.train
    print(f"kdlab demo: recipe {recipe.name}, dataset {recipe.dataset.name}, {args.seeds} seeds from {recipe.seed}; "
          f"student {st.epochs} epochs, {st.optimizer.name} lr {st.optimizer.lr}; loss {recipe.distill.loss}, "
          f"T={recipe.distill.temperature}, hard_weight={recipe.distill.hard_weight}, soft_weight={recipe.distill.soft_weight}",
          flush=True)
    result = run_demo(recipe, args.seeds, out=args.out, progress=args.progress, teacher_cache=args.teacher_cache,
                      plots=bool(args.plots) and _want_plots(None))
    print(result.table())
    print(f"run folder: {result.out}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .recipes import bundled_recipes, dump_recipe, load_recipe

    _import_user(args)
    if args.name:
        print(dump_recipe(load_recipe(args.name, args.overrides, args.imports)), end="")
    else:
        for name in bundled_recipes():
            print(name)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .explain import explain

    e = explain(args.teacher, args.student, args.label, args.temperature, args.hard_weight, args.soft_weight)
    print(f"teacher logits {args.teacher}, student logits {args.student}, true class {args.label}")
    print("\n".join(e.lines(args.temperature, args.label, args.hard_weight, args.soft_weight)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .study.compare import compare
    from .study.report import markdown, write_report
    from .train.rundir import RunDir

    from .teacher_cache import check_teacher_cache
    from .utils import check_output_location

    recipe = recipe_from_args(args, None)
    out = check_output_location(args.out or RunDir.fresh_path(recipe.out_dir, f"{recipe.name}-compare"), "--out folder")
    check_teacher_cache(args.teacher_cache)
    plots = _want_plots(args.plots)
    losses = args.losses if args.losses is not None or args.methods is not None else DEFAULT_LOSSES
    result = compare(
        recipe, losses, args.seeds, methods=args.methods, teacher_cache=args.teacher_cache, batched=args.batched,
        target_acc=args.target_acc, progress=args.progress, tensorboard_dir=Path(out) / "tb",
    )
    path = write_report(result, out, plots=plots)
    print(markdown(result).split("\n\nFiles:")[0])
    print(f"report: {path / 'report.md'}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .utils import environment

    info = environment()
    cpu = info.pop("cpu")
    print(f"cpu: {cpu['model']}; torch kernels {cpu['capability']}; AMX {'yes' if cpu['amx'] else 'no'}, "
          f"AVX-512-BF16 {'yes' if cpu['avx512_bf16'] else 'no'} -> precision auto = {'bf16' if cpu['bf16_native'] else 'fp32'} on the CPU")
    if "cuda" in info:
        cuda = info.pop("cuda")
        print(f"cuda: {cuda['device']}; precision auto = {'bf16' if cuda['bf16'] else 'fp16'}")
    # start-up time: loaded only by this command
    from .train.callbacks import tensorboard_available

    info["tensorboard"] = "installed" if tensorboard_available() else "not installed (no event files)"
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .features import format_layer_table, layer_table, penultimate
    from .pipeline import build_role_model, prepare_data

    recipe = recipe_from_args(args, None)
    data = prepare_data(recipe)
    roles = [args.role] if args.role else ["teacher", "student"]
    for i, role in enumerate(roles):
        model = build_role_model(recipe, role, data)
        spec = getattr(recipe, role).model
        print(("\n" if i else "") + f"{role}: {spec.name} on {data.name} input {list(data.in_shape)} (batch of 2)")
        print(format_layer_table(layer_table(model, data.in_shape, role=role)))
        last = penultimate(model, data.in_shape)
        if last is not None:
            print(f"penultimate feature (the rkd/crd default): the input of {last[0]!r}, {list(last[1])}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .ship import export_onnx, export_torchscript
    from .ship.export import check_atol, check_targets

    _import_user(args)  # the run's model may be one the user registered
    if not (args.onnx or args.torchscript):
        raise KDLabError("nothing to export: pass --onnx student.onnx and/or --torchscript student.pt")
    check_atol(args.atol)
    check_targets({"--onnx": args.onnx, "--torchscript": args.torchscript}, args.force)  # both, before either is written
    kw = dict(checkpoint=args.checkpoint, normalization=args.normalization, atol=args.atol, force=args.force)
    results = ([export_onnx(args.run, args.onnx, opset=args.opset, **kw)] if args.onnx else []) + \
              ([export_torchscript(args.run, args.torchscript, **kw)] if args.torchscript else [])
    print("\n".join(line for r in results for line in r.lines()))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .ship import profile_recipe, profile_run

    if args.recipe and Path(args.recipe).is_dir():
        profile = profile_run(args.recipe, args.teacher, args.checkpoint, threads=args.threads)
    else:
        if args.teacher:
            raise KDLabError("--teacher applies to a run folder; for a recipe the recipe's own teacher is built")
        profile = profile_recipe(recipe_from_args(args, None), threads=args.threads)
    print(f"profile of {profile.source}\n{profile.table()}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .methods import METHODS

    _import_user(args)
    for name in METHODS.names():
        entry = METHODS.get(name)
        fields = ", ".join(f"{f.name}" for f in dataclasses.fields(entry.params)) if entry.params else ""
        print(f"{name:13s} {entry.summary}" + (f" [distill.{name}: {fields}]" if fields else ""))
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .losses import SOFT_LOSSES

    _import_user(args)
    for name in SOFT_LOSSES.names():
        doc = (SOFT_LOSSES.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:22s} {doc}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .doctor import diagnose, load_function, parse_layout, parse_values

    fn = load_function(args.function)
    layout = parse_layout(args.shape) if args.shape else None
    d = diagnose(fn, args.temperature, args.soft_weight, parse_values(args.args, "--arg"),
                 init=parse_values(args.init, "--init"), student_arg=args.student_arg, teacher_arg=args.teacher_arg,
                 layout=layout)
    print("\n".join(d.lines()))
    return 0 if d.correct else 1


def _want_plots(flag: Optional[bool]) -> bool:
    if flag is not None:
        return flag
    try:
        import matplotlib  # noqa: F401  (optional: matplotlib)
    except ImportError:
        print("kdlab: matplotlib not installed, skipping plots (pip install 'kdlab[report]')", file=sys.stderr)
        return False
    return True


def cmd_tune(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .study.tune import tune, tune_report
    from .train.rundir import RunDir

    from .teacher_cache import check_teacher_cache
    from .study.tune import check_storage
    from .utils import check_output_location

    recipe = recipe_from_args(args, None)
    out = check_output_location(Path(args.out) if args.out else RunDir.fresh_path(recipe.out_dir, f"{recipe.name}-tune"), "--out folder")
    storage = args.storage or str(out / "study.db")
    check_storage(storage)
    check_teacher_cache(args.teacher_cache)
    plots = _want_plots(args.plots)
    result = tune(recipe, args.param, args.trials, args.sampler, storage, args.study_name, args.grid_points,
                  args.teacher_cache, args.progress)
    path = tune_report(result, out, plot=plots)
    print(f"best: {result.best_params} -> val acc {100 * result.best_value:.2f}% "
          f"({sum(r['state'] == 'COMPLETE' for r in result.trials)} completed trials in {result.storage})")
    print(f"report: {path / 'report.md'}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    # start-up time: loaded only by this command
    from .study import hinton2015  # noqa: F401  (registers the reproduction)
    from .study.reproduce import REPRODUCTIONS, Settings, write_result
    from .utils import check_output_location

    from .teacher_cache import check_teacher_cache

    rep = REPRODUCTIONS.get(args.name)
    if args.quick and (args.epochs is not None or args.teacher_epochs is not None):
        raise KDLabError("--quick sets the epochs itself; drop --epochs/--teacher-epochs, or drop --quick")
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{rep.name}"
    out = check_output_location(out, "--out folder")
    if (out / "results.json").exists():
        raise KDLabError(f"--out {out} already holds a reproduction (results.json); choose another folder or remove it")
    check_teacher_cache(args.teacher_cache)
    seeds = [args.seed + i for i in range(args.seeds)]
    quick = rep.quick if args.quick else {}
    settings = Settings(
        data_dir=args.data_dir, download=not args.no_download, overrides=args.overrides,
        teacher_epochs=quick.get("teacher", args.teacher_epochs), epochs=quick.get("student", args.epochs),
        teacher_cache=args.teacher_cache, progress=args.progress, log=_say)
    _say(f"kdlab reproduce {rep.name}: {rep.title}; seeds {', '.join(map(str, seeds))}; recipes {', '.join(rep.recipes)}"
         + ("; --quick: a smoke run, far from the paper's numbers" if args.quick else ""))
    result = rep.run(seeds, out, settings)
    write_result(result, out)
    print(result.markdown())
    print(f"report: {out / 'report.md'} (results.json beside it; run folders under {out})")
    return 0


# Upper bounds for the command's own counts: beyond these a run could never finish, and a huge
# value would otherwise fail deep inside (memory for the seed grid, C integers in Optuna/SQLite).
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="kdlab", description="Knowledge distillation for PyTorch: train a teacher, distill a student, compare.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"kdlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    def add(name: str, func: Callable, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description, epilog=EPILOG)
        p.set_defaults(func=func, command_prog=p.prog, command_parser=p)
        return p

    p = add("train-teacher", cmd_train_teacher, "train the recipe's teacher on hard labels",
            "Train the teacher on hard labels; writes config, run.json, metrics.jsonl, best.pt and last.pt.")
    _common(p, "teacher")
    p = add("train-student", cmd_train_student, "train the recipe's student from scratch (baseline)",
            "Train the student from scratch on hard labels: the baseline a distilled student must beat.")
    _common(p, "student")
    p = add("distill", cmd_distill, "distill the student from a teacher",
            "Distill the student with --method (default hinton: total = hard_weight*CE(s, y) + soft_weight*T^2*KL(softmax(t/T) || "
            "softmax(s/T)); fitnets, at, rkd, crd, dkd, multi-teacher, self-ema add their own terms, set in the recipe's "
            "distill.<method> section or with --set distill.<method>.<key>=VALUE; see `kdlab methods`). "
            "Without --teacher the recipe's teacher comes from the teacher cache (trained and cached on first use, "
            "shared with compare and tune). The teacher's test accuracy is printed. The teacher stays in eval mode and runs once: "
            "on the training set (its logits, for methods that read logits alone on un-augmented batches), or, with augmentation "
            "or a feature method, on every stored view of each sample (the teacher signal store beside the teacher cache, reused by "
            "later runs); --teacher-online runs it on every batch instead.")
    _common(p, "student")
    p.add_argument("--teacher", help="teacher checkpoint (best.pt/last.pt of a train-teacher run); default: the recipe's "
                                      "teacher from the teacher cache, trained there on first use")
    p.add_argument("--teacher-epochs", type=int, help="teacher training epochs when the teacher comes from the cache")
    p.add_argument("--teacher-cache", help="teacher cache folder (default: $KDLAB_TEACHER_CACHE, then ~/.cache/kdlab/teachers)")
    p.add_argument("--teacher-online", action="store_true",
                   help="run the teacher on every batch instead of training from the stored teacher signal "
                        "(recipe: teacher_signals.online)")
    _distill_flags(p)
    p.add_argument("--method", help="distillation method (default: the recipe's distill.method, hinton); see `kdlab methods`")
    p = add("demo", cmd_demo, "teacher, scratch student and distilled student, side by side",
            "Train a teacher (or reuse it from the teacher cache), then for each of --seeds seeds a scratch and a "
            "distilled student from the same initial weights and batch order (batched, like `kdlab compare`). Prints "
            "both students' mean ± std, the paired difference distilled − scratch with its 95% interval and on how "
            "many seeds distillation won. Runs on the embedded scikit-learn digits by default (no download); "
            "--dataset mnist for the real thing.")
    _common(p, None, "every scratch and distilled student")
    p.add_argument("--seeds", type=int, default=DEMO_SEEDS, help=f"seeds (a scratch and a distilled student each), starting at --seed (default {DEMO_SEEDS})")
    p.add_argument("--teacher-cache", help="teacher cache folder (default: $KDLAB_TEACHER_CACHE, then ~/.cache/kdlab/teachers)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=False, help="also write compare's PNG plots (default: off)")
    _distill_flags(p)
    p = add("compare", cmd_compare, "compare KD loss codings or methods over several seeds, with statistics",
            "Train the teacher once (cached by its config and seed), then for each seed a scratch student and one "
            "student per loss (or per method with --methods), all from the same initial weights and batch order. Writes report.md, summary.csv, "
            "epochs.csv, results.json, step_losses.npz and PNG plots, and prints the summary table.")
    _common(p, None, "every scratch and distilled student")
    p.add_argument("--losses", default=None,
                   help=f"comma-separated loss codings of Hinton KD (see `kdlab losses`; default {DEFAULT_LOSSES}); scratch is always added")
    p.add_argument("--methods", default=None,
                   help="instead of --losses: comma-separated methods (see `kdlab methods`), e.g. hinton,fitnets,at,rkd,crd,dkd; "
                        "each uses the recipe's distill.<method> section, paired differences are against hinton")
    p.add_argument("--seeds", type=int_in(1, MAX_SEEDS), default=5, help="number of seeds, starting at the recipe seed (default 5)")
    p.add_argument("--teacher-cache", help="teacher cache folder (default: $KDLAB_TEACHER_CACHE, then ~/.cache/kdlab/teachers)")
    p.add_argument("--batched", action=argparse.BooleanOptionalAction, default=None,
                   help="train all students in one batched step (default: when the student has no dropout/BatchNorm)")
    p.add_argument("--target-acc", type=percent, help="accuracy for 'epochs to target', e.g. 95 or 0.95 (default: scratch's mean final accuracy)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None, help="write PNG plots (default: if matplotlib is installed)")
    _distill_flags(p, loss=False)
    p = add("tune", cmd_tune, "search T / loss weights / any recipe value with Optuna",
            "Hyperparameter search for the distilled student. The objective is final-epoch accuracy on a validation "
            "split carved from the training set (10 percent unless the recipe sets dataset.val_fraction); the test set is "
            "never used. The study is stored in a database (default: OUT/study.db), so re-running the same command "
            "resumes it and several workers given the same --storage share it. Writes trials.csv, best.json, "
            "report.md and a PNG of validation accuracy vs T.")
    _common(p, None, "each trial's distilled student")
    p.add_argument("--param", action="append", default=[], required=True, metavar="NAME=LOW:HIGH",
                   help="search dimension: T=1:10, soft_weight=0:1, lr=1e-4:1e-2:log, distill.loss=hinton,no-T2, or any "
                        "recipe key (repeatable; aliases T, soft_weight, hard_weight, lr, weight_decay, batch_size)")
    p.add_argument("--trials", type=int_in(1, MAX_TRIALS), default=20, help="completed trials the study should reach (default 20)")
    p.add_argument("--sampler", choices=["grid", "random", "tpe"], default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--grid-points", type=int, default=5, help="points per range for --sampler grid (default 5)")
    p.add_argument("--storage", help="SQLite file or database URL (default: OUT/study.db)")
    p.add_argument("--study-name", help="study name inside the storage (default: <recipe>-tune)")
    p.add_argument("--teacher-cache", help="teacher cache folder (default: $KDLAB_TEACHER_CACHE, then ~/.cache/kdlab/teachers)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None, help="write the PNG (default: if matplotlib is installed)")
    p = add("reproduce", cmd_reproduce, "reproduce a paper's experiments, each result printed beside the paper's",
            "Run a paper's experiments from bundled recipes over --seeds seeds and print each result beside the paper's, "
            "with the mean ± std over seeds, a 95% interval, and a verdict: 'reproduced' when the paper's figure lies in "
            "the 95% prediction interval of one more run, else the gap. Writes OUT/report.md, OUT/results.json and one "
            "run folder per trained model. NAME: hinton2015 (Hinton, Vinyals & Dean 2015, section 3, MNIST: teacher "
            "784-1200-1200-10 with dropout, jitter and max-norm, 67 test errors; student 784-800-800-10 alone, 146; "
            "distilled at T = 20, 74; transfer set without 3s, 206 errors, 109 after a bias offset on 3; transfer set of "
            "7s and 8s only, 47.3% error, 13.2% after an offset on 7 and 8; recipes hinton2015-mnist, hinton2015-no3, "
            "hinton2015-only78). Offsets are chosen by prior matching on the training set; the test-set-optimal offset the "
            "paper used is reported beside, labelled as such. The teacher comes from the teacher cache (trained there on "
            "first use). Deviations from the paper's protocol are listed in the report.")
    p.add_argument("name", metavar="NAME", help="the reproduction: hinton2015")
    p.add_argument("--seeds", type=int_in(1, MAX_SEEDS), default=3, help="number of seeds, from --seed (default 3)")
    p.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0, help="first seed (default 0)")
    p.add_argument("--out", help="folder for report.md, results.json and the run folders (default runs/reproduce-NAME)")
    p.add_argument("--data-dir", help="folder holding mnist/ with the four IDX .gz files (default: $KDLAB_DATA_DIR, then ~/.cache/kdlab)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 teacher and 2 student epochs (numbers far from the paper's)")
    p.add_argument("--epochs", type=int_in(1, 10_000), help="epochs of every student (default: the recipes', 12)")
    p.add_argument("--teacher-epochs", type=int_in(1, 10_000), help="teacher epochs (default: the recipe's, 12)")
    p.add_argument("--teacher-cache", help="teacher cache folder (default: $KDLAB_TEACHER_CACHE, then ~/.cache/kdlab/teachers)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of every recipe of the reproduction, e.g. --set student.train.lr=0.0005 (repeatable; "
                        "recorded in the report's protocol)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: on a terminal; elsewhere a line per epoch and per trained model)")
    p = add("layers", cmd_layers, "list the recipe's model modules with their output shapes",
            "Print every named module of the recipe's teacher and/or student with its type, output shape on a batch of "
            "2 of the dataset's inputs, and parameter count: the names FitNets/attention-transfer layer pairs use "
            "(distill.fitnets.pairs: {student_module: teacher_module}).")
    p.add_argument("recipe", nargs="?", default=None, help="bundled recipe name or YAML path (default: mnist-mlp)")
    p.add_argument("--role", choices=["teacher", "student"], help="only this model (default: both)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register models), repeatable")
    p.add_argument("--dataset", help="dataset name")
    p.add_argument("--data-dir", help="data folder (default: $KDLAB_DATA_DIR, then ~/.cache/kdlab)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p = add("export", cmd_export, "export a run's student to ONNX / TorchScript, checked against PyTorch",
            "Export the student of RUN_DIR (its best.pt: the model alone; FitNets adapters and other training-only parts "
            "are not part of it) with a dynamic batch axis. Before the file appears, onnxruntime (or torch.jit.load) runs "
            "it on random inputs at batch 1 and 64 and must match PyTorch within --atol; otherwise nothing is written "
            "and the command exits 2. --normalization graph (default) puts kdlab's input scaling, (pixels / pixel_max "
            "- mean) / std with the training set's statistics, into the graph, so the file takes raw pixels; "
            "metadata exports the model as trained and records the formula in the file's metadata. The command "
            "prints which. ONNX needs pip install 'kdlab[onnx]'.")
    p.add_argument("run", metavar="RUN_DIR", help="folder of a train-student / distill / train-teacher run, or a .pt checkpoint")
    _imports(p, "import MODULE first (it may register the run's model), repeatable")
    p.add_argument("--onnx", metavar="PATH", help="write the ONNX file here (opset recorded, metadata kdlab.*)")
    p.add_argument("--torchscript", metavar="PATH", help="also (or instead) write a traced TorchScript file here")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of RUN_DIR (default best)")
    p.add_argument("--normalization", choices=["graph", "metadata"], default="graph",
                   help="graph: the file takes raw pixels (default); metadata: normalised tensors, formula in the metadata")
    p.add_argument("--opset", type=int_in(18, 23), default=18, help="ONNX opset (default 18)")
    p.add_argument("--atol", type=finite_float, default=1e-4, help="largest |exported - PyTorch| accepted (default 1e-4)")
    p.add_argument("--force", action="store_true", help="replace an existing --onnx / --torchscript file (default: refuse)")
    p = add("profile", cmd_profile, "teacher vs student: parameters, FLOPs, size, CPU latency, accuracy kept",
            "Measure the teacher and the student side by side: parameters, FLOPs per image (torch.utils.flop_counter), "
            "serialized size as fp32 and as int8 (dynamic quantization of Linear layers), CPU latency at batch 1 and "
            "64 (median of repeated runs; the thread count is printed), speed-up and the accuracy the student keeps. "
            "RUN_DIR: a distill run's best.pt and the teacher its run.json records. RECIPE: its models as built, "
            "untrained (accuracy n/a). Latency depends on the machine and its load: compare numbers from one host.")
    p.add_argument("recipe", nargs="?", default=None, metavar="RECIPE|RUN_DIR", help="run folder, or recipe name / YAML (default mnist-mlp)")
    p.add_argument("--teacher", metavar="CHECKPOINT", help="teacher checkpoint to compare with (default: the run's recorded teacher)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of RUN_DIR (default best)")
    p.add_argument("--threads", type=int_in(1, 1024), help="torch threads for the latency runs (default: torch's setting)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help="import MODULE first, repeatable")
    p.add_argument("--dataset", help="dataset name (RECIPE only)")
    p.add_argument("--data-dir", help="data folder (default: $KDLAB_DATA_DIR, then ~/.cache/kdlab)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p = add("methods", cmd_methods, "list the registered distillation methods",
            "List every registered distillation method with its recipe parameter section.")
    _imports(p)
    p = add("losses", cmd_losses, "list the registered soft-loss codings",
            "List every registered soft-loss coding (the correct hinton loss and the pitfalls found in the wild).")
    _imports(p)
    p = add("doctor", cmd_doctor, "check your own KD loss function against the Hinton loss",
            "Run MODULE:FUNCTION (a function, an nn.Module loss class or a module-level loss instance) on probe logits, "
            "compare its gradient, then its value, with the Hinton loss and name the known pitfall it matches "
            "(probabilities as KL input, extra T, mean reduction, missing T^2, reversed KL, sum over the batch, NaN/inf "
            "at realistic logits, |logit| <= 50) or the other loss it is (MSE, Jensen-Shannon, cosine; its gradient is "
            "compared with Hinton's), with the evidence. A constant offset (soft-target cross-entropy = KL + teacher "
            "entropy), hard-term changes (label smoothing), an undetached teacher and NaN/inf only at larger logits are "
            "notes. Argument roles are read from the names (student_logits, y_s, outputs, y_pred_student, stu_out, ...; "
            "teacher_logits, y_t, soft_labels, ...; kd_temp); guesses are printed. A function that only runs on (B, L, K) "
            "or (B, K, H, W) logits is diagnosed on those. "
            "Exit code 0: correct; 1: a problem was found; 2: the function could not be checked.")
    p.add_argument("function", help="package.module:NAME or path/to/file.py:NAME (function, loss class or loss instance)")
    p.add_argument("-T", "--temperature", type=float, help="temperature to probe at; required when the function takes no T argument")
    p.add_argument("--soft-weight", type=float, help="the soft-term weight you intend (only used when T is fixed inside the function)")
    p.add_argument("--arg", dest="args", action="append", default=[], metavar="NAME=VALUE",
                   help="value for another parameter of the function, e.g. --arg alpha=0.9 (repeatable)")
    p.add_argument("--init", action="append", default=[], metavar="NAME=VALUE",
                   help="constructor argument when NAME is a loss class, e.g. --init T=4 (YAML value, finite; repeatable)")
    p.add_argument("--student-arg", metavar="NAME", help="the parameter that receives the student logits")
    p.add_argument("--teacher-arg", metavar="NAME", help="the parameter that receives the teacher logits")
    p.add_argument("--shape", metavar="AXES",
                   help="logit axes: B,K (default), B,L,K for sequences, B,K,H,W for dense prediction; sizes optional (B,L=12,K)")
    p = add("explain", cmd_explain, "walk through one KD loss computation step by step",
            "Compute soft labels, soft/hard predictions, KL, the T^2-scaled soft term, CE and the total for one "
            "example, in log space (logits of any size, e.g. +-1e4, give finite numbers; NaN/inf logits are refused). "
            "Defaults: the worked example (teacher 2.0,1.0,0.1; student 1.8,0.9,0.4; T=2; class 0).")
    p.add_argument("--teacher", type=float_list, default=[2.0, 1.0, 0.1], help="teacher logits, e.g. 2.0,1.0,0.1 (first value negative: --teacher=-1,2,3)")
    p.add_argument("--student", type=float_list, default=[1.8, 0.9, 0.4], help="student logits, e.g. 1.8,0.9,0.4 (first value negative: --student=-1,2,3)")
    p.add_argument("--label", type=int, default=0, help="true class index")
    p.add_argument("-T", "--temperature", type=float, default=2.0, help="temperature T > 0")
    p.add_argument("--hard-weight", type=float, default=1.0, help="weight of CE")
    p.add_argument("--soft-weight", type=float, default=0.5, help="weight of the T^2-scaled KL")
    add("env", cmd_env, "show versions and what this machine offers for mixed precision",
        "Print the library versions, the CPU (torch's kernel level, AMX / AVX-512-BF16: what precision: auto picks) "
        "and CUDA device, as recorded in every run.json.")
    p = add("recipes", cmd_recipes, "list bundled recipes or print one, resolved",
            "Without NAME: list bundled recipes. With NAME: print the validated recipe after --set overrides.")
    p.add_argument("name", nargs="?", help="recipe name or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _imports(p, "import MODULE first, so a recipe naming what it registers validates (repeatable; printed as imports)")
    return parser


# Exit status when a write to stdout fails because its reader has gone away: 128 + SIGPIPE, what the
# shell reports for git, cat or seq in the same spot, so ``set -o pipefail`` scripts see it the same way.
# Output the pipe took whole before the reader left (``kdlab recipes | head -1``) exits 0, as theirs does:
# no write failed, so the writer cannot know.
EXIT_BROKEN_PIPE = 141


def _run(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the hint points at its --help
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # start-up time: loaded only by this command
    from .train import distributed

    world = distributed.launched_world_size()
    if world > 1 and args.command not in distributed.DDP_COMMANDS:
        return _refuse(args, KDLabError(f"kdlab {args.command} runs in one process; launch it without torchrun (torchrun "
                                        f"started {world}: only {', '.join(distributed.DDP_COMMANDS)} train data-parallel)"))
    if not distributed.owns_session():  # one process, or inside a process group the caller made
        return _guarded(args)
    try:
        with distributed.session(), distributed.interrupt_once():
            code = _guarded(args)
    except KDLabError as exc:  # joining the group failed
        return _refuse(args, exc)
    sys.stdout.flush()
    distributed.leave(code)  # every worker of the launch ends here, together, with its own code


def _guarded(args: argparse.Namespace) -> int:
    """Run the command: a KDLabError is one line and exit 2, Ctrl-C one line and exit 130. Its
    intra-op threads are planned once for the whole command (kdlab.device.command_threads)."""
    from .device import command_threads  # here, not at the top: listing commands start without torch

    try:
        with command_threads():
            return int(args.func(args) or 0)
    except KDLabError as exc:
        return _refuse(args, exc)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception:
        # start-up time: loaded only by this command
        from .train import distributed

        if distributed.interrupted():  # a collective ended by a peer that Ctrl-C stopped first
            return _interrupted()
        if distributed.owns_group() and distributed.is_peer_failure(sys.exc_info()[1]):
            _stderr_line("kdlab: error: another process of this torchrun launch stopped while this one waited for it; "
                         "its own message above says why")
            return 1
        raise


def _interrupted() -> int:
    _stderr_line("kdlab: interrupted; completed epochs and checkpoints are kept")
    return 130


def _refuse(args: argparse.Namespace, exc: KDLabError) -> int:
    msg = " ".join(str(exc).split())
    _stderr_line(f"kdlab: error: {msg} (see `{args.command_prog} --help`)")
    return 2


def _stderr_line(line: str) -> None:
    """One stderr line in one write: under torchrun several workers share the stream, and a line
    written in two pieces (``print``'s text, then its newline) can interleave with another's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise 'Exception ignored'."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (argparse's own exits raise SystemExit as usual).

    A closed stdout ends quietly with status 141, the recipe of Python's signal documentation:
    catch BrokenPipeError and point stdout at /dev/null before exiting.
    """
    try:
        try:
            code = _run(argv)
        finally:
            sys.stdout.flush()  # surface a closed pipe here (also after --help's SystemExit), not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
