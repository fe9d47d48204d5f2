"""Trainer callbacks: everything around the epoch loop that is not training itself.

The trainer (:mod:`kdlab.train.trainer`) runs epochs and steps; writing metrics, checkpoints,
progress and moving schedules are callbacks, in the spirit of Lightning's Trainer/Callback split.
A later feature (TensorBoard, rank-0-only writing under DDP) is one more callback, not another
branch in the loop.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class Callback:
    """Hooks the trainer calls; every default does nothing."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        """After the optimizer exists and any resume state is loaded, before the first epoch."""

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        """Before epoch ``epoch`` (1-based) trains; schedules move the method's values here."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        """After evaluation, with one metrics record per student; the records are final."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """After the last epoch, or when training stops early with an error."""


class CallbackList(Callback):
    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks: List[Callback] = [c for c in callbacks if c is not None]

    def on_fit_start(self, trainer: "Trainer") -> None:
        for c in self.callbacks:
            c.on_fit_start(trainer)

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        for c in self.callbacks:
            c.on_epoch_start(trainer, epoch)

    def on_epoch_end(self, trainer: "Trainer", epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(trainer, epoch, records)

    def on_fit_end(self, trainer: "Trainer") -> None:
        for c in self.callbacks:
            c.on_fit_end(trainer)


class ScheduleCallback(Callback):
    """Moves T and the loss weights of every distilling method before each epoch.

    ``hook(epoch, method)`` is e.g. :class:`kdlab.schedules.ScheduleHook`; methods without a
    soft term (CE: no ``soft_weight``) are left alone.
    """

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        for method in trainer.methods:
            if hasattr(method, "soft_weight"):
                self.hook(epoch, method)


class EpochProgress(Callback):
    """A progress bar over epochs on a terminal, else one line per epoch on stderr.

    Long runs are never silent for minutes in CI logs, pipes or files, and nothing runs per step.
    """

    def __init__(self, desc: str, epochs: int, bar: bool) -> None:
        self.desc, self.epochs, self.bar = desc, epochs, bar
        self._tqdm: Any = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.bar:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.epochs, initial=trainer.start_epoch - 1, desc=self.desc, leave=False, unit="epoch")

    def on_epoch_end(self, trainer: "Trainer", epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        """``distill epoch 3/20: loss 0.4120, test acc 95.12%, 0.5 s`` (means over batched students)."""
        n = len(records)

        def mean(key: str) -> float:
            return sum(float(r[key]) for r in records) / n

        parts = [f"loss {mean('loss_total'):.4f}"]
        for key in ("val_acc", "test_acc"):
            if key in records[0]:
                parts.append(f"{'mean ' if n > 1 else ''}{key.replace('_', ' ')} {100 * mean(key):.2f}%")
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(", ".join(parts), refresh=False)
            self._tqdm.update()
            return
        seconds = records[0].get("seconds", 0.0)
        who = f" ({n} students)" if n > 1 else ""
        print(f"{self.desc} epoch {epoch}/{self.epochs}{who}: {', '.join(parts)}, {seconds:.1f} s", file=sys.stderr, flush=True)

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


def epoch_progress(progress: Optional[bool], desc: str, epochs: int) -> Optional[Callback]:
    """``progress=None``: a bar on a terminal, a line per epoch otherwise; False: silent; True: a bar."""
    if progress is False:
        return None
    return EpochProgress(desc, epochs, bar=sys.stderr.isatty() if progress is None else True)


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write (it needs the ``tensorboard`` package)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardCallback(Callback):
    """TensorBoard event files: every numeric key of each epoch record, and the per-step losses.

    Per epoch (x = epoch): ``epoch/<key>`` for every number in the record (``loss_total``, each
    ``loss_<term>``, accuracies and losses, ``lr``, ``T``, the loss weights, seconds, ...). Per step
    (x = step of the run): ``step/loss_<term>``, every ``step_every``-th step, written at the
    epoch's end from the rows the trainer already holds (nothing runs in the step loop; one event
    costs ~75 µs, so logging all 469 steps of an MNIST epoch would add ~10% to a small student's epoch).

    ``names``: one sub-folder per student when the trainer returns several records per epoch
    (batched students: ``<variant>-seed<k>``); None writes one run into ``log_dir``. Without the
    ``tensorboard`` package it writes nothing (``pip install tensorboard``).
    """

    def __init__(self, log_dir: Any, names: Optional[Sequence[str]] = None, step_every: int = 10) -> None:
        from pathlib import Path

        self.log_dir, self.names, self.step_every = Path(log_dir), list(names) if names is not None else None, max(1, int(step_every))
        self.writers: List[Any] = []

    def _writer(self, m: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        while len(self.writers) <= m:
            i = len(self.writers)
            folder = self.log_dir if self.names is None else self.log_dir / self.names[i]
            self.writers.append(SummaryWriter(str(folder)))
        return self.writers[m]

    def on_epoch_end(self, trainer: "Trainer", epoch: int, records: Sequence[Dict[str, Any]]) -> None:
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

    def on_fit_end(self, trainer: "Trainer") -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []
