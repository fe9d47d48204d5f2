"""The one interface every distillation method implements.

A method (a :class:`Distiller`) is a thin ``nn.Module`` around pure, separately tested loss
functions. Given a batch, the student's outputs and the teacher's outputs it returns a dict of
*named, unweighted* loss terms; its :meth:`Distiller.term_weights` say how they add up to the
total. It declares what it needs (:class:`Needs`) and the trainer supplies exactly that — teacher
logits (cached when the data is not augmented), named intermediate features of either model
(forward hooks on unmodified models), sample indices. The trainer knows only this interface:
it never inspects a method's type, has no fixed loss columns, and logs every term by name.

Trainable helpers a method owns (adapters, embedding heads, memory banks) are ordinary
submodules/buffers of the method, so they are optimised and clipped with the student, saved and
resumed with its checkpoint, and never part of the exported student.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Needs:
    """What a method reads besides the student's logits and the labels."""

    teacher_logits: bool = False
    student_features: Tuple[str, ...] = ()  # module names of the student, hooked
    teacher_features: Tuple[str, ...] = ()  # module names of the teacher, hooked
    indices: bool = False  # the batch's sample indices into the training set (memory banks)
    # teacher logits per member of a teacher ensemble, (B, members, K), instead of their mean (B, K)
    teacher_members: bool = False
    # the method's own moving average of the student is its teacher (:meth:`Distiller.ema_step`)
    ema_teacher: bool = False
    # state kept per training sample (CRD's memory banks): each torchrun process would update only
    # its own shard's rows, so such a method runs in one process only
    per_sample_state: bool = False

    @property
    def teacher(self) -> bool:
        """True when the method reads anything of the teacher."""
        return self.teacher_logits or bool(self.teacher_features)

    @property
    def logits_only(self) -> bool:
        """True when cached teacher logits are all the method needs (the fast path's condition)."""
        return not (self.student_features or self.teacher_features)


#: :attr:`Distiller.schedules` entries: the run's weight schedule moves the method's ``hard`` and
#: ``soft`` terms (keeping their sum), its temperature schedule the method's T.
WEIGHT_SCHEDULE = "weights"
TEMPERATURE_SCHEDULE = "temperature"


@dataclass(frozen=True)
class EpochWeights:
    """What the run's weight plan (:class:`kdlab.train.weights.WeightPlan`) puts in force for one epoch.

    Computed from the epoch alone, so a resumed run trains with the uninterrupted run's weights.
    """

    epoch: int  # 1-based
    #: term -> weight in force (what :meth:`Distiller.weights` returns): the stage's, when it lists terms
    weights: Dict[str, float]
    #: term -> the method's own weight before any stage: configured × schedule × its warm-up (what it records)
    method_weights: Dict[str, float]
    #: term -> the method's warm-up factor this epoch (:meth:`Distiller.warmup_factors`; 1 where it sets none)
    factors: Dict[str, float]
    temperature: Optional[float] = None  # None: the method has no temperature
    stage: Optional[int] = None  # 1-based index of the stage in force; None: the run has no stages
    stage_name: Optional[str] = None
    stage_terms: bool = False  # True when the stage's terms replaced the method's weights


@dataclass
class RunContext:
    """What the trainer tells a method once, before training (:meth:`Distiller.setup`)."""

    num_samples: int  # training-set size: memory banks indexed by sample
    seed: int  # the run's seed: a method's own random draws
    student: nn.Module
    teacher: Optional[nn.Module] = None  # the unwrapped teacher model (an ensemble: ``.members``)
    #: accuracy of a model on the validation split; None when the data have none
    val_accuracy: Optional[Callable[[nn.Module], float]] = None


@dataclass
class Batch:
    """One training batch. ``y`` holds class indices, or class probabilities after MixUp/CutMix."""

    x: Tensor
    y: Tensor
    index: Optional[Tensor] = None
    #: which replayable view of each sample ``x`` is (:mod:`kdlab.data.views`), when the run replays stored views
    view: Optional[Tensor] = None


@dataclass
class Outputs:
    """A model's logits for the batch and the features hooked on its named modules."""

    logits: Tensor
    features: Dict[str, Tensor] = field(default_factory=dict)


class Distiller(nn.Module):
    """Base class of every method; see the module docstring.

    Subclasses set ``needs`` (per instance: it may depend on the configured layer pairs) and
    implement :meth:`forward` and :meth:`term_weights`.
    """

    needs: Needs = Needs()
    #: True when the method creates parts from observed shapes (adapters): the trainer then calls
    #: :meth:`build` on a probe batch before the optimizer exists, so those parts are trained.
    lazy: bool = False
    #: True when the batched grid (``kdlab compare``) may train this method although it reads features:
    #: it has no parameters of its own (it must then not be ``lazy``); see also :attr:`grid_vmap`.
    #: The grid taps each student's features in the stacked forward and hands the method its slice.
    grid_features: bool = False
    #: True when the method's forward is vmap-compatible, so the grid computes it for all seeds of a
    #: variant in one call; False (data-dependent operations: ``torch.unique``, boolean indexing): the
    #: grid calls it once per seed on that seed's slice. Either way the students' forward and backward
    #: stay stacked, and each student gets exactly its own loss.
    grid_vmap: bool = True
    #: Why the batched grid cannot train this method (per-student parameters, data-dependent ops), in
    #: the user's words; None: the generic reason from what it needs.
    grid_refusal: Optional[str] = None

    #: Which of the run's schedules move this method (:data:`WEIGHT_SCHEDULE`, :data:`TEMPERATURE_SCHEDULE`);
    #: none by default. The weight schedule needs ``hard`` and ``soft`` terms.
    schedules: FrozenSet[str] = frozenset()
    #: The weights and T in force this epoch, handed over by the run's weight plan (:meth:`use_weights`);
    #: None before any plan ran and after a run: the method as configured.
    epoch_weights: Optional[EpochWeights] = None

    #: The registered name (``fitnets``), set by :func:`~kdlab.methods.registry.build_method`; None for a
    #: method built directly. Messages use it to name the method's recipe section.
    method_name: Optional[str] = None
    #: Term -> the setting that weighs it, so messages (the loss-share note) can name the knob to turn:
    #: ``distill.<field>`` for the shared distill settings, a bare ``<field>`` for the method's own
    #: parameters (recipe ``distill.<method>.<field>``). Every one is also a ``kdlab.distill`` keyword.
    weight_settings: Dict[str, str] = {"hard": "distill.hard_weight", "soft": "distill.soft_weight"}

    def setup(self, ctx: RunContext) -> None:
        """Called by the trainer once, before :meth:`build` (see :class:`RunContext`). Default: nothing."""

    def ema_step(self, student: nn.Module) -> nn.Module:  # pragma: no cover - only methods with needs.ema_teacher
        """Move the method's EMA copy towards ``student`` and return it (``needs.ema_teacher`` methods)."""
        raise NotImplementedError

    def build(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> None:
        """Create shape-dependent parts from one probe batch (default: one forward creates them)."""
        self(batch, student, teacher)

    def teacher_signal(self, name: str, feature: Tensor) -> Tensor:
        """The form of the teacher's feature ``name`` this method reads: the smallest that gives the same loss.

        Every teacher source hands the method this form (the online teacher as well as the stored
        teacher signal, which stores it), so both give the same loss. Default: the feature itself.
        """
        return feature

    def teacher_signal_form(self, name: str) -> str:
        """What :meth:`teacher_signal` computes, as a stable string (part of a signal store's key)."""
        return "feature"

    def warmup_factors(self, epoch: int) -> Dict[str, float]:
        """The method's own factor per term at 1-based ``epoch`` (DKD's linear warm-up, FitNets' hint-only
        epochs); terms not named keep factor 1. A pure function of the epoch, so a resumed run gets the
        uninterrupted run's weights. Default: none."""
        return {}

    def configured_temperature(self) -> Optional[float]:
        """The method's configured T, which the run's temperature schedule moves; None: it has none."""
        return None

    def use_weights(self, weights: Optional[EpochWeights]) -> None:
        """Called by the run's weight plan before each epoch (None after the run: back to the configured weights)."""
        self.epoch_weights = weights

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:  # pragma: no cover
        """Named, unweighted loss terms (scalar tensors) for this batch."""
        raise NotImplementedError

    def term_weights(self) -> Dict[str, float]:  # pragma: no cover
        """Term name -> configured weight, in the order terms are logged (the weight plan starts from these)."""
        raise NotImplementedError

    def weights(self) -> Dict[str, float]:
        """The weights in force: the ones the weight plan handed over this epoch, else :meth:`term_weights`."""
        w = self.epoch_weights
        return dict(w.weights) if w is not None else self.term_weights()

    def method_weights(self) -> Dict[str, float]:
        """The method's own weights this epoch, before any stage (configured × schedule × warm-up): what it records."""
        w = self.epoch_weights
        return dict(w.method_weights) if w is not None else self.term_weights()

    def current_temperature(self) -> Optional[float]:
        """The T in force: the weight plan's this epoch, else :meth:`configured_temperature`."""
        w = self.epoch_weights
        return w.temperature if w is not None and w.temperature is not None else self.configured_temperature()

    def weight_setting(self, term: str) -> str:
        """Where a user changes ``term``'s weight: the recipe key and the ``kdlab.distill`` keyword.

        A staged run's weights come from its stage (``distill.stages[i].terms``); a term without a
        declared setting is named as such rather than guessed.
        """
        w = self.epoch_weights
        if w is not None and w.stage_terms and w.stage is not None:
            return f"distill.stages[{w.stage - 1}].terms.{term} (kdlab.distill: stages=)"
        setting = self.weight_settings.get(term)
        if setting is None:
            return f"the weight of the {term} term"
        if setting.startswith("distill."):
            key, keyword = setting, setting.split(".", 1)[1]
        else:
            key, keyword = f"distill.{self.method_name or '<method>'}.{setting}", setting
        return f"{key} (kdlab.distill: {keyword}=)"

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """Σ weight · term over the method's terms (terms of weight 0 are logged, not added)."""
        total: Optional[Tensor] = None
        for name, w in self.weights().items():
            if w != 0:
                part = terms[name] * w
                total = part if total is None else total + part
        if total is None:  # every weight 0: a zero that still depends on the graph
            total = sum(terms.values()) * 0.0  # type: ignore[assignment]
        return total  # type: ignore[return-value]

    def fast_path(self, labels: Tensor, num_classes: int, teacher_logits: Optional[Tensor]) -> Any:
        """A closed-form step computing exactly this method's total and gradient, or None.

        Offered only by methods whose terms depend on logits alone (see :mod:`kdlab.methods.kd`);
        the trainer uses it when the data are not augmented. Default: no fast path.
        """
        return None

    def epoch_info(self) -> Dict[str, float]:
        """Values recorded in every epoch's metrics besides the terms (weights, T, …)."""
        return {f"weight_{k}": float(v) for k, v in self.method_weights().items()}

    def term_values(self, terms: Mapping[str, Tensor], total: Tensor) -> Tensor:
        """[total, *terms] as one detached vector, the per-step row the trainer keeps."""
        return torch.stack([total, *(terms[k] for k in self.term_weights())]).detach()


def layer_pair_needs(method: str, pairs: Mapping[str, str]) -> Needs:
    """What a method comparing named layers needs: teacher logits (for its KD term) and both sides'
    features. No pairs is a one-line error pointing at ``kdlab layers``."""
    if not pairs:
        raise ConfigError(f"{method} needs layer pairs: distill.{method}.pairs: {{student_module: teacher_module}} "
                          "(list the modules with `kdlab layers RECIPE --role student|teacher`)")
    return Needs(teacher_logits=True, student_features=tuple(pairs), teacher_features=tuple(pairs.values()))
