"""Trainer callbacks: everything around the epoch loop that is not training itself.

The trainer (:mod:`kdlab.train.trainer`) runs epochs and steps; writing metrics, checkpoints,
progress and notes are callbacks (the loss weights per epoch are the run's weight plan, :mod:`kdlab.train.weights`), in the spirit of Lightning's Trainer/Callback split.
A later feature (TensorBoard, rank-0-only writing under DDP) is one more callback, not another
branch in the loop.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Sequence, TypeVar

from . import distributed
from .records import term_shares

T = TypeVar("T")


class Loop(Protocol):
    """What a callback reads of the epoch loop (:class:`kdlab.train.trainer.Trainer` is one)."""

    model: Any
    method: Any
    methods: List[Any]
    optimizer: Any
    histories: List[List[Dict[str, Any]]]
    step_rows: List[Any]
    start_epoch: int
    epoch: int
    best_epoch: int

    def step_losses(self, rows: Any) -> List[Any]: ...

    def state_dict(self) -> Dict[str, Any]: ...

    def run_facts(self) -> Dict[str, Any]: ...


class Callback:
    """Hooks the trainer calls; every default does nothing."""

    def on_fit_start(self, trainer: Loop) -> None:
        """After the optimizer exists and any resume state is loaded, before the first epoch."""

    def on_epoch_start(self, trainer: Loop, epoch: int) -> None:
        """Before epoch ``epoch`` (1-based) trains; the run's weight plan is applied right after."""

    def on_epoch_end(self, trainer: Loop, epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        """After evaluation, with one metrics record per student; the records are final."""

    def on_fit_end(self, trainer: Loop) -> None:
        """After the last epoch, or when training stops early with an error."""

    def wrap_steps(self, trainer: Loop, steps: Iterable[T], total: Optional[int]) -> Iterable[T]:
        """The epoch's step iterable, ``total`` items long when known; a progress display wraps it.

        The default hands it back unchanged, so a run without such a callback pays nothing per step.
        """
        return steps


class CallbackList(Callback):
    def __init__(self, callbacks: Sequence[Optional[Callback]] = ()) -> None:
        self.callbacks: List[Callback] = [c for c in callbacks if c is not None]

    def extend(self, callbacks: Sequence[Optional[Callback]]) -> None:
        """Add callbacks before the fit starts (the run builder adds the run folder's once it exists)."""
        self.callbacks.extend(c for c in callbacks if c is not None)

    def on_fit_start(self, trainer: Loop) -> None:
        for c in self.callbacks:
            c.on_fit_start(trainer)

    def on_epoch_start(self, trainer: Loop, epoch: int) -> None:
        for c in self.callbacks:
            c.on_epoch_start(trainer, epoch)

    def on_epoch_end(self, trainer: Loop, epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(trainer, epoch, records)

    def on_fit_end(self, trainer: Loop) -> None:
        for c in self.callbacks:
            c.on_fit_end(trainer)

    def wrap_steps(self, trainer: Loop, steps: Iterable[T], total: Optional[int]) -> Iterable[T]:
        for c in self.callbacks:
            steps = c.wrap_steps(trainer, steps, total)
        return steps


class RankZero(Callback):
    """Runs ``callback`` on rank 0 only (run-folder files, progress); a plain pass-through otherwise."""

    def __init__(self, callback: Callback) -> None:
        self.callback = callback

    def _active(self) -> bool:
        return distributed.is_main()

    def on_fit_start(self, trainer: Loop) -> None:
        if self._active():
            self.callback.on_fit_start(trainer)

    def on_epoch_start(self, trainer: Loop, epoch: int) -> None:
        if self._active():
            self.callback.on_epoch_start(trainer, epoch)

    def on_epoch_end(self, trainer: Loop, epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        if self._active():
            self.callback.on_epoch_end(trainer, epoch, records)

    def on_fit_end(self, trainer: Loop) -> None:
        if self._active():
            self.callback.on_fit_end(trainer)

    def wrap_steps(self, trainer: Loop, steps: Any, total: Optional[int]) -> Any:
        return self.callback.wrap_steps(trainer, steps, total) if self._active() else steps


def rank_zero(callback: Optional[Callback]) -> Optional[Callback]:
    return None if callback is None else RankZero(callback)


class PlanNote(Callback):
    """Prints what the builder chose for the run and why (``-v``): the step, the teacher source, threads, precision."""

    def __init__(self, say: Callable[[str], None] = None) -> None:  # type: ignore[assignment]
        self.say = say or stderr_line

    def on_fit_start(self, trainer: Loop) -> None:
        for line in plan_lines(trainer.run_facts()):
            self.say(f"kdlab: {line}")


def plan_lines(facts: Dict[str, Any]) -> List[str]:
    """The run's choices as short lines (see :class:`PlanNote`)."""
    lines = [f"step: {facts.get('step')} ({facts.get('step_reason')})",
             f"teacher: {facts.get('teacher_source')} ({facts.get('teacher_source_reason')})"]
    threads = facts.get("threads") or {}
    if threads:
        lines.append(f"threads: {threads.get('intra_op')} ({threads.get('reason')})")
    precision = facts.get("precision") or {}
    if precision:
        lines.append(f"precision: {precision.get('autocast')} (train.precision={precision.get('setting')}), "
                     f"processes={facts.get('processes')}")
        lines.append(f"channels_last: student {facts.get('channels_last')}, teacher {facts.get('teacher_channels_last')} "
                     f"({facts.get('channels_last_reason')})")
    return lines


#: A weighted term above this share of the loss, in the first epoch weighing several terms, gets a note.
#: Above the ~92% a default Hinton run's soft term has at the start (T = 4 and a confident teacher:
#: T²·KL is ~12× the CE), below FitNets' ~97% at weight 100 (digits, small CNNs; benchmarks/api_defaults.md).
DOMINANT_SHARE = 0.95


def stderr_line(line: str) -> None:
    """Print one whole line on stderr."""
    print(line, file=sys.stderr, flush=True)


def _num(x: float) -> str:
    return f"{x:.3g}"


class LossShareNote(Callback):
    """Each weighted term's share of the loss in every epoch record (``share_<term>``) and, once per
    run, a one-line note when one term outweighs all the others together.

    A weight set for another loss scale (FitNets' 100 multiplies a per-element MSE of CIFAR
    features) can make one term nearly all of the gradient's source while the hard CE is still
    present: the student then mostly fits that term. Judged once, on the first epoch that weighs
    two or more terms (the start of training; after a hint-only stage, the first joint epoch):
    late in training a small CE marks a fitted student, not a drowned one. When one term is more
    than ``threshold`` of the loss, the note gives its share, each term's weight × epoch-mean value
    and the setting that weighs it (:meth:`Distiller.weight_setting`); it is kept in that epoch's
    record under ``notes`` (so ``metrics.jsonl`` holds it) and, when ``say`` is given, printed.
    Values come from the records the trainer built: nothing runs per step. The share is of the loss
    VALUE: a term's share of the gradient can differ (a T²-scaled soft term is ~T times its gradient's size).
    """

    def __init__(self, say: Optional[Callable[[str], None]] = None, threshold: float = DOMINANT_SHARE) -> None:
        self.say, self.threshold = say, float(threshold)
        self.judged: List[bool] = []

    def on_fit_start(self, trainer: Loop) -> None:
        # a resumed run was judged before it stopped if an earlier record has shares
        self.judged = [any(any(k.startswith("share_") for k in r) for r in h) for h in trainer.histories]

    def on_epoch_end(self, trainer: Loop, epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        for m, (method, record) in enumerate(zip(trainer.methods, records)):
            weights = method.weights()
            shares = term_shares(record, weights)
            record.update({f"share_{t}": v for t, v in shares.items()})
            while len(self.judged) <= m:
                self.judged.append(False)
            if not shares or self.judged[m]:
                continue
            self.judged[m] = True
            note = dominance_note(method, record, weights, shares, epoch, self.threshold)
            if note is not None:
                record.setdefault("notes", []).append(note)
                if self.say is not None:
                    self.say(f"kdlab: note: {note}")


def loss_share_note(progress: Optional[bool]) -> LossShareNote:
    """Loss shares in every record; the note printed unless ``progress`` is False (rank 0 alone under torchrun)."""
    return LossShareNote(say=stderr_line if progress is not False and distributed.is_main() else None)


def dominance_note(method: Any, record: Dict[str, Any], weights: Dict[str, float], shares: Dict[str, float],
                   epoch: int, threshold: float = DOMINANT_SHARE) -> Optional[str]:
    """The note's text when one term's share is above ``threshold``, else None (see :class:`LossShareNote`)."""
    term, share = max(shares.items(), key=lambda kv: kv[1])
    if not share > threshold:
        return None
    order = [term, *(t for t in shares if t != term)]
    parts = ", ".join(f"{t} {_num(weights[t])} × {_num(float(record[f'loss_{t}']))}" for t in order)
    return (f"the {term} term is {100 * share:.0f}% of the loss in epoch {epoch} ({parts}); if the student lags, "
            f"lower {method.weight_setting(term)}")


#: Seconds between two progress lines inside an epoch when stderr is not a terminal.
LINE_INTERVAL = 30.0
#: Seconds between two refreshes of the step bar on a terminal.
BAR_INTERVAL = 0.25
#: Most steps between two reads of the clock (the stride adapts to the measured step rate).
MAX_STRIDE = 4096


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``: a rough time for a person, never false precision."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class EpochProgress(Callback):
    """Progress over epochs and inside each epoch: bars on a terminal, else lines on stderr.

    On a terminal: a bar over epochs and one over the steps of the current epoch. Elsewhere (CI,
    pipes, log files): one line per epoch and, during an epoch, a line at most every ``interval``
    seconds (counted from the last line of either kind) with the step, the step rate and the time
    left, so a long run is never silent for minutes. Per step the wrapped iterator only counts and
    compares: the clock is read once every ``stride`` steps, the stride chosen from the measured
    rate so that it is read about once a second (``check_every`` seconds on a terminal), and lines
    are formatted only when one is printed. ``clock`` (seconds, monotonic) and ``interval`` are
    parameters so tests drive them without real time.
    """

    def __init__(self, desc: str, epochs: int, bar: bool, interval: float = LINE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, check_every: Optional[float] = None) -> None:
        self.desc, self.epochs, self.bar = desc, epochs, bar
        self.interval, self.clock = float(interval), clock
        self.check_every = float(check_every if check_every is not None else (BAR_INTERVAL if bar else min(1.0, interval)))
        self._tqdm: Any = None
        self.epoch = 0
        self.last_line = 0.0  # clock time of the last line printed (either kind)
        self.epoch_seconds: Optional[float] = None  # the last whole epoch, evaluation included

    def on_fit_start(self, trainer: Loop) -> None:
        self.last_line = self.clock()
        if self.bar:
            from tqdm.auto import tqdm  # start-up time: only a terminal's bars need it

            self._tqdm = tqdm(total=self.epochs, initial=trainer.start_epoch - 1, desc=self.desc, leave=False, unit="epoch")

    def on_epoch_start(self, trainer: Loop, epoch: int) -> None:
        self.epoch = epoch

    def wrap_steps(self, trainer: Loop, steps: Iterable[T], total: Optional[int]) -> Iterator[T]:
        """Yield ``steps`` unchanged, reading the clock every ``stride`` steps (see the class docstring)."""
        clock, check_every = self.clock, self.check_every
        start = clock()
        bar = self._step_bar(total) if self.bar else None
        shown, next_check, stride = 0, 1, 1
        try:
            for n, item in enumerate(steps, 1):
                yield item  # the step runs while the generator is suspended: n steps are done below
                if n >= next_check:
                    now = clock()
                    elapsed = now - start
                    rate = n / elapsed if elapsed > 0 else 0.0
                    stride = max(1, min(MAX_STRIDE, int(rate * check_every))) if rate > 0 else min(MAX_STRIDE, 2 * stride)
                    next_check = n + stride
                    if bar is not None:
                        bar.update(n - shown)
                        shown = n
                    elif now - self.last_line >= self.interval:
                        self._step_line(n, total, rate)
                        self.last_line = now
        finally:
            if bar is not None:
                bar.close()

    def _step_bar(self, total: Optional[int]) -> Any:
        from tqdm.auto import tqdm  # start-up time: only a terminal's bars need it

        return tqdm(total=total, desc=f"epoch {self.epoch}/{self.epochs}", leave=False, unit="step", position=1)

    def _step_line(self, n: int, total: Optional[int], rate: float) -> None:
        """``teacher epoch 2/20: step 300/469, 9.8 steps/s, ~17 s left in this epoch, ~15.3 min left in all 20 epochs``."""
        parts = [f"step {n}/{total}" if total else f"step {n}", f"{rate:.1f} steps/s" if rate < 100 else f"{rate:.0f} steps/s"]
        if total and rate > 0:
            epoch_left = max(0, total - n) / rate
            per_epoch = self.epoch_seconds if self.epoch_seconds is not None else total / rate
            parts.append(f"~{duration(epoch_left)} left in this epoch")
            if self.epoch < self.epochs:
                parts.append(f"~{duration(epoch_left + (self.epochs - self.epoch) * per_epoch)} left in all {self.epochs} epochs")
        print(f"{self.desc} epoch {self.epoch}/{self.epochs}: {', '.join(parts)}", file=sys.stderr, flush=True)

    def on_epoch_end(self, trainer: Loop, epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        """``distill epoch 3/20: loss 0.4120, test acc 95.12%, 0.5 s`` (means over batched students)."""
        n = len(records)

        def mean(key: str) -> float:
            return sum(float(r[key]) for r in records) / n

        parts = [f"loss {mean('loss_total'):.4f}"]
        for key in ("val_acc", "test_acc"):
            if key in records[0]:
                parts.append(f"{'mean ' if n > 1 else ''}{key.replace('_', ' ')} {100 * mean(key):.2f}%")
        seconds = records[0].get("seconds", 0.0)
        self.epoch_seconds = float(seconds) if seconds else None
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(", ".join(parts), refresh=False)
            self._tqdm.update()
            return
        who = f" ({n} students)" if n > 1 else ""
        print(f"{self.desc} epoch {epoch}/{self.epochs}{who}: {', '.join(parts)}, {seconds:.1f} s", file=sys.stderr, flush=True)
        self.last_line = self.clock()

    def on_fit_end(self, trainer: Loop) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


def epoch_progress(progress: Optional[bool], desc: str, epochs: int, interval: float = LINE_INTERVAL,
                   clock: Callable[[], float] = time.monotonic) -> Optional[Callback]:
    """``progress=None``: bars on a terminal, lines otherwise (per epoch, and every ``interval`` s
    inside one); False: silent, nothing wraps the steps; True: bars."""
    if progress is False:
        return None
    return EpochProgress(desc, epochs, bar=sys.stderr.isatty() if progress is None else True, interval=interval, clock=clock)


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write (it needs the ``tensorboard`` package)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardCallback(Callback):
    """TensorBoard event files: every numeric key of each epoch record, and the per-step losses.

    Per epoch (x = epoch): ``epoch/<key>`` for every number in the record (``loss_total``, each
    ``loss_<term>``, accuracies and losses, ``lr``, ``T``, the loss weights, seconds, ...). Per step
    (x = step of the run): ``step/loss_<term>``, every ``step_every``-th step, written at the
    epoch's end from the rows the trainer already holds (nothing runs in the step loop; an event per
    step would cost a small student's epoch a noticeable share of its time).

    ``names``: one sub-folder per student when the trainer returns several records per epoch
    (batched students: ``<variant>-seed<k>``); None writes one run into ``log_dir``. Without the
    ``tensorboard`` package it writes nothing (``pip install 'kdlab[tensorboard]'``).
    """

    def __init__(self, log_dir: Any, names: Optional[Sequence[str]] = None, step_every: int = 10) -> None:
        self.log_dir, self.names, self.step_every = Path(log_dir), list(names) if names is not None else None, max(1, int(step_every))
        self.writers: List[Any] = []

    def _writer(self, m: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard

        while len(self.writers) <= m:
            i = len(self.writers)
            folder = self.log_dir if self.names is None else self.log_dir / self.names[i]
            self.writers.append(SummaryWriter(str(folder)))
        return self.writers[m]

    def on_epoch_end(self, trainer: Loop, epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        if not tensorboard_available():
            return
        steps = trainer.step_losses(trainer.step_rows[-1]) if trainer.step_rows else []
        for m, record in enumerate(records):
            writer = self._writer(m)
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"epoch/{key}", value, epoch)
            if m < len(steps):
                names, rows = steps[m]
                n = rows.shape[0]
                picked = rows[self.step_every - 1 :: self.step_every].tolist()
                first = (epoch - 1) * n + self.step_every
                for i, row in enumerate(picked):
                    for name, value in zip(names, row):
                        writer.add_scalar(f"step/loss_{name}", value, first + i * self.step_every)
            writer.flush()

    def on_fit_end(self, trainer: Loop) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []
