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
