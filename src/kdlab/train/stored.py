"""The stored teacher signal as a teacher source: the plan a run is given, and the store built from it.

When a run's teacher would run on every batch (augmented batches, feature methods), the builder
can be handed a :class:`SignalsPlan`: the replayable views of the training set
(:class:`~kdlab.data.views.ReplayViews`) and a function that opens or computes a signal store
(:func:`kdlab.teacher_cache.signals.signal_store`, bound to the cache folder by the caller, so this
layer imports nothing above it). The online teacher then runs once per (sample, view), into the
store, in the form the method reads (:meth:`~kdlab.methods.base.Distiller.teacher_signal`), and
every student step reads its teacher side from the store.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..data.tensors import tensor_fingerprint
from ..device import autocast_dtype
from ..errors import ConfigError
from ..losses.topk import check_top_k, compress_logits
from ..methods.base import Batch, Distiller, Needs
from ..device import has_convolutions
from .precision import Precision
from .sources import OnlineTeacher, StoredSignals, signal_names

#: Features with at most this many numbers per sample are stored in float32, larger ones in bfloat16
#: (``feature_dtype: auto``): small signals cost nothing to keep exact, large ones halve the store.
EXACT_UP_TO = 4096
FEATURE_DTYPES = ("auto", "float32", "bfloat16")
#: Above this many classes, ``top_k: auto`` stores the top :data:`AUTO_TOP_K` logits (FKD's compression).
FULL_LOGITS_UP_TO = 1000
AUTO_TOP_K = 10
STORE_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TeacherSignalsConfig:
    """The recipe's ``teacher_signals:`` section (every key optional).

    ``views``: stored views per training sample when the batches are augmented (un-augmented
    batches need one; capped at the run's epochs, since more would never be read); ``dtype``:
    how features are stored (``auto``: float32 up to 4,096 numbers per sample, else bfloat16);
    ``max_gb``: the largest store kdlab may write; ``online: true`` keeps the teacher online
    (as ``--teacher-online``); ``top_k``: logits kept per row (``auto``: all of them up to 1,000
    classes, else the top 10 with one rest logit, :mod:`kdlab.losses.topk`; ``all``; or a number);
    ``precision``: what the teacher computes the store in (``auto``: bf16 where the hardware has
    native bf16, else fp32). Without the section, the store is used whenever it applies and
    fits ``max_gb``; a store that does not fit then keeps the teacher online, with the reason.
    """

    views: int = 8
    dtype: str = "auto"
    max_gb: float = 20.0
    online: bool = False
    top_k: Any = "auto"
    precision: str = "auto"
    given: bool = False  # the recipe has the section (a store that does not fit is then an error)

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]], where: str = "teacher_signals") -> "TeacherSignalsConfig":
        if data is None or data == {}:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping like {{views: 8}}, got {data!r}")
        accepted = ("views", "dtype", "max_gb", "online", "top_k", "precision")
        for key in data:
            if key not in accepted:
                raise ConfigError(f"{where}.{key}: unknown key; accepted: {', '.join(accepted)}")
        cfg = cls(**dict(data), given=True)
        if isinstance(cfg.views, bool) or not isinstance(cfg.views, int) or cfg.views < 1:
            raise ConfigError(f"{where}.views: stored views per sample must be an integer >= 1 (e.g. 8), got {cfg.views!r}")
        if cfg.dtype not in FEATURE_DTYPES:
            raise ConfigError(f"{where}.dtype: choose one of {', '.join(FEATURE_DTYPES)}, got {cfg.dtype!r}")
        if isinstance(cfg.max_gb, bool) or not isinstance(cfg.max_gb, (int, float)) or not (0 < cfg.max_gb < math.inf):
            raise ConfigError(f"{where}.max_gb: the store's size limit in GB must be a positive number, got {cfg.max_gb!r}")
        if not isinstance(cfg.online, bool):
            raise ConfigError(f"{where}.online: must be true or false, got {cfg.online!r}")
        if cfg.top_k not in ("auto", "all") and (isinstance(cfg.top_k, bool) or not isinstance(cfg.top_k, int) or cfg.top_k < 1):
            raise ConfigError(f"{where}.top_k: logits kept per row: auto, all or a number >= 1 (e.g. 10), got {cfg.top_k!r}")
        if cfg.precision not in STORE_PRECISIONS:
            raise ConfigError(f"{where}.precision: choose one of {', '.join(STORE_PRECISIONS)}, got {cfg.precision!r}")
        return cfg

    def top_k_for(self, classes: int) -> Optional[int]:
        """Logits to keep per row (None: all): ``auto`` keeps all up to 1,000 classes."""
        k = (AUTO_TOP_K if classes > FULL_LOGITS_UP_TO else None) if self.top_k == "auto" else (
            None if self.top_k == "all" else self.top_k)
        if k is not None:
            check_top_k(k, classes)
        return k

    def views_for(self, augmented: bool, epochs: int) -> int:
        """Views to store: one for un-augmented batches, else ``views`` capped at the epochs."""
        return min(self.views, max(int(epochs), 1)) if augmented else 1


@dataclass
class SignalsPlan:
    """What a run needs to train from a stored teacher signal."""

    views: Any  # kdlab.data.views.ReplayViews
    #: (key, samples=, views=, shapes=, compute=, device=, batch_size=) -> a store (``signal_store`` bound to a folder)
    open_store: Callable[..., Any]
    feature_dtype: str = "auto"
    #: True when the user asked for the store: a store that does not fit is then an error, not a fallback
    explicit: bool = False
    batch_size: int = 256
    #: False: replay the same views but keep the teacher online (what the store must equal; tests and checks)
    store: bool = True
    #: logits kept per row (None: all of them); else the top k and one rest logit (:mod:`kdlab.losses.topk`)
    top_k: Optional[int] = None
    #: what the teacher computes the store in (``auto``: bf16 where native); fp32 gives the online teacher's numbers
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ConfigError(f"teacher_signals.dtype: choose one of {', '.join(FEATURE_DTYPES)}, got {self.feature_dtype!r}")
        if self.precision not in STORE_PRECISIONS:
            raise ConfigError(f"teacher_signals.precision: choose one of {', '.join(STORE_PRECISIONS)}, got {self.precision!r}")


class StudySignals(Distiller):
    """The teacher side of several methods (a study's, a batched grid's) as one method, for one store: the
    teacher's logits and the union of their teacher features, each in the form of the first method reading it.

    A later method reading a stored layer in another form is left out (:attr:`left_out`): its run gets a
    store of its own, and a batched grid, whose step reads one array per layer, cannot hold it. With
    ``other_forms`` such a method is still listed in :attr:`left_out` (it cannot join the grid) but its
    layer is stored a second time in its form, under an alias (:attr:`aliases`, ``<layer>@<form>``),
    from the same tap, so its run reads this store.
    """

    def __init__(self, methods: Sequence[Distiller], other_forms: bool = False) -> None:
        super().__init__()
        self.owners: Dict[str, Distiller] = {}
        #: alias -> (the tapped layer, the method whose form it stores)
        self.aliases: Dict[str, Tuple[str, Distiller]] = {}
        self.left_out: List[Distiller] = []
        for m in methods:
            clash = [n for n in m.needs.teacher_features
                     if n in self.owners and self.owners[n].teacher_signal_form(n) != m.teacher_signal_form(n)]
            if clash:
                self.left_out.append(m)
                if not other_forms:
                    continue
            for name in m.needs.teacher_features:
                self.owners.setdefault(name, m)
            for name in clash:
                self.aliases.setdefault(form_alias(name, m.teacher_signal_form(name)), (name, m))
        self.needs = Needs(teacher_logits=True, teacher_features=tuple(self.owners))
        # top-k logits are stored at one temperature: the first method's that has one (another T: its own store)
        self.temperature = next((t for t in (m.configured_temperature() for m in methods) if t is not None), None)

    def _reader(self, name: str) -> Tuple[str, Distiller]:
        return self.aliases[name] if name in self.aliases else (name, self.owners[name])

    def configured_temperature(self) -> Optional[float]:
        return self.temperature

    def teacher_signal(self, name: str, feature: Tensor) -> Tensor:
        layer, method = self._reader(name)
        return method.teacher_signal(layer, feature)

    def teacher_signal_form(self, name: str) -> str:
        layer, method = self._reader(name)
        return method.teacher_signal_form(layer)

    def forward(self, batch: Batch, student: Any, teacher: Any) -> Dict[str, Tensor]:  # pragma: no cover - never trained
        raise TypeError("StudySignals only describes a stored teacher signal; it is not trained")

    def term_weights(self) -> Dict[str, float]:  # pragma: no cover - never trained
        return {}


def form_alias(layer: str, form: str) -> str:
    """The store's name for ``layer`` kept a second time, in ``form`` (file-name safe)."""
    return f"{layer}@{re.sub(r'[^A-Za-z0-9._-]', '_', form)}"


def model_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes, bytes): the teacher's identity."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def store_precision(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype the teacher computes a store in (None: fp32). ``auto``: bf16 only where it is
    native (CUDA with bf16, a CPU with AMX or AVX-512-BF16); emulated bf16 would be slower than fp32."""
    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if autocast_dtype("auto", device) == torch.bfloat16 else None


def _form(method: Distiller, name: str, top_k: Optional[int], temperature: Optional[float]) -> str:
    if name.startswith("feature:"):
        return method.teacher_signal_form(name.split(":", 1)[1])
    return "logits" if top_k is None else f"{name}:k={top_k}:T={temperature!r}"


def _dtype(plan: SignalsPlan, name: str, shape: Tuple[int, ...]) -> str:
    if name == "logits_top_index":
        return "int32"
    if name.startswith("logits") or plan.feature_dtype == "float32":
        return "float32"
    if plan.feature_dtype == "bfloat16":
        return "bfloat16"
    return "float32" if math.prod(shape) <= EXACT_UP_TO else "bfloat16"


def stored_source(plan: SignalsPlan, method: Distiller, online: OnlineTeacher, train: Any, fingerprint: str,
                  precision: Precision, device: Optional[torch.device]) -> Tuple[Optional[StoredSignals], str]:
    """The stored signal of ``online``'s teacher on ``plan.views`` of ``train``, with the reason; (None, why not)
    when the store would not fit and the user did not ask for it (the teacher then stays online)."""
    X, Y, views = train.x, train.y, plan.views
    features = online.feature_names
    top_k, temperature = plan.top_k, method.configured_temperature()
    if top_k is not None and temperature is None:
        raise ConfigError(f"teacher_signals.top_k: {type(method).__name__} reads the teacher's logits at no temperature, "
                          "so top-k logits would change its loss; use teacher_signals.top_k=all")
    names = signal_names(features, top_k is not None)
    dev = X.device
    store_dtype = store_precision(plan.precision, dev)
    # the run's layout (channels_last) and, unless the store asks otherwise, its autocast dtype
    autocast_as = precision.dtype if plan.precision == "fp32" and store_dtype is None else store_dtype

    def teacher_outputs(index: Tensor, view: Tensor) -> Any:
        x, y = views(X, Y, index, view)
        xb = precision.teacher_inputs(x)
        with torch.no_grad(), torch.autocast(precision.device_type, dtype=autocast_as, enabled=autocast_as is not None):
            out = online.outputs(Batch(xb, y, index, view))
        assert out is not None
        return out

    def pack(out: Any) -> Dict[str, Tensor]:
        """The store's rows of one batch of teacher outputs (logits, or their top-k form, and features)."""
        logits = out.logits.float()
        if top_k is None:
            head = {"logits": logits}
        else:
            values, indices, rest = compress_logits(logits, top_k, float(temperature))  # type: ignore[arg-type]
            head = {"logits_top_values": values, "logits_top_index": indices, "logits_rest": rest}
        return {**head, **{f"feature:{n}": out.features[n].float() for n in features}}

    def compute(index: Tensor, view: Tensor) -> Dict[str, Tensor]:
        return pack(teacher_outputs(index, view))

    first = (torch.arange(min(2, len(X)), device=dev), torch.zeros(min(2, len(X)), dtype=torch.long, device=dev))
    probe_out = teacher_outputs(*first)
    classes, probe = int(probe_out.logits.shape[-1]), pack(probe_out)
    shapes = {k: (tuple(t.shape[1:]), _dtype(plan, k, tuple(t.shape[1:]))) for k, t in probe.items()}
    key = {"format": 1, "teacher": model_digest(online.model) if online.model is not None else None,
           # the dataset's identity and the training tensors this run reads (a caller may hand in a share of them)
           "data": fingerprint, "train": tensor_fingerprint([X, Y], "train"), "samples": len(X), "views": views.describe(), "members": online.members,
           "precision": str(autocast_as) if autocast_as is not None else "fp32",
           # the teacher's layout: a model without convolutions computes the same in either
           "channels_last": precision.teacher_channels_last and has_convolutions(online.model),
           "signals": {k: {"form": _form(method, k, top_k, temperature), "dtype": shapes[k][1]} for k in names}}
    try:
        store = plan.open_store(key, samples=len(X), views=views.views, shapes=shapes, compute=compute,
                                device=dev, batch_size=plan.batch_size)
    except ConfigError as exc:
        if plan.explicit:
            raise
        return None, f"the teacher runs online: {exc}"
    how = "computed now" if store.computed else "reused"
    logits_form = "all logits" if top_k is None else f"top-{top_k} logits + rest at T={temperature:g}"
    why = (f"teacher signal store ({how}, {store.nbytes / 1e6:.1f} MB, {logits_form}, "
           f"{'fp32' if autocast_as is None else str(autocast_as).replace('torch.', '')}): {views.views} view(s) per sample, "
           "read by index and view; no teacher forward in a step")
    return StoredSignals(store, features, online.model, classes=classes), why
