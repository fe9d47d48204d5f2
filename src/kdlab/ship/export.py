"""Export a trained student to ONNX (or TorchScript) that reproduces kdlab's predictions when deployed.

kdlab trains on pre-scaled tensors, ``x = (pixels / pixel_max - mean) / std`` with the training
set's statistics (recorded in every checkpoint's ``input``). A deployed model fed raw pixels would
silently lose accuracy, so by default that scaling becomes the first operation of the exported
graph (``normalization="graph"``: feed raw pixels); ``normalization="metadata"`` exports the
model as trained and writes the formula into the file's metadata for the caller to apply.

The file is checked before it exists: it is written to a temporary file beside the target,
run on random inputs at two batch sizes (onnxruntime, or ``torch.jit.load``) against PyTorch,
and only renamed into place when every output is within ``atol``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import ExportError, KDLabError
from ..logits import logits_of
from ..models import count_parameters
from ..utils import WriteError, current_umask, check_output_location, os_error_reason
from .source import LoadedModel, load_student

NORMALIZATIONS = ("graph", "metadata")
DEFAULT_OPSET = 18
CHECK_BATCHES = (1, 64)
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx's exporter needs the first two; the check, the third


class RawPixelInput(nn.Module):
    """Raw pixels (0..pixel_max, as in the dataset's files) in; kdlab's training-time scaling, then the model.

    The same operations in the same order as :func:`kdlab.data.tensors.normalize_images`, so the
    deployed graph sees the tensors the model was trained and evaluated on.
    """

    def __init__(self, model: nn.Module, pixel_max: float, mean: float, std: float) -> None:
        super().__init__()
        self.model, self.pixel_max, self.mean, self.std = model, float(pixel_max), float(mean), float(std)

    def forward(self, pixels: Tensor) -> Tensor:
        return logits_of(self.model((pixels / self.pixel_max - self.mean) / self.std), "student")


class LogitsOnly(nn.Module):
    """The model's logits alone (by :func:`kdlab.logits.logits_of`) for a model whose forward returns
    a container: the exported file then has one output, the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x), "student")


@dataclass
class ExportResult:
    """What was written and how it was checked; :meth:`lines` is what the CLI prints."""

    path: Path
    format: str  # "onnx" or "torchscript"
    checkpoint: Path
    normalization: str  # "graph" or "metadata"
    input_desc: str
    max_abs_diff: Dict[int, float]
    atol: float
    opset: Optional[int] = None
    metadata: Dict[str, str] = field(default_factory=dict)

    def lines(self) -> List[str]:
        what = f"ONNX opset {self.opset}" if self.format == "onnx" else "TorchScript"
        diffs = ", ".join(f"{d:.1e} at batch {b}" for b, d in self.max_abs_diff.items())
        checker = "onnxruntime" if self.format == "onnx" else "torch.jit.load"
        return [
            f"exported: {self.path} ({what}, dynamic batch axis; model {self.metadata.get('kdlab.model', '?')} "
            f"from {self.checkpoint}; adapters and other training-only parts are not in the file)",
            f"input: {self.input_desc}",
            f"checked: {checker} vs PyTorch on random inputs, max abs diff {diffs} (tolerance {self.atol:.0e})",
        ]


def deployable(loaded: LoadedModel, normalization: str = "graph") -> Tuple[nn.Module, Dict[str, str], str, Callable[[int, torch.Generator], Tensor]]:
    """(module to export, metadata, one-line description of its input, sampler of valid inputs)."""
    if normalization not in NORMALIZATIONS:
        raise KDLabError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    spec = loaded.input_spec
    shape = [int(s) for s in spec["shape"]]
    shown = f"(batch, {', '.join(map(str, shape))})"
    known = all(isinstance(spec.get(k), (int, float)) for k in ("mean", "std", "pixel_max"))
    meta = {"kdlab.version": __version__, "kdlab.model": loaded.name, "kdlab.checkpoint": str(loaded.path),
            "kdlab.input_spec": json.dumps(spec, sort_keys=True), "kdlab.normalization": normalization,
            "kdlab.num_classes": str(loaded.payload["model"]["num_classes"])}
    if normalization == "graph":
        if not known:
            raise ExportError(f"checkpoint {loaded.path} records no input normalisation (written by an older kdlab), so it "
                              "cannot be put into the graph; pass --normalization metadata to export the model as trained")
        pmax, mean, std = float(spec["pixel_max"]), float(spec["mean"]), float(spec["std"])
        module: nn.Module = RawPixelInput(loaded.model, pmax, mean, std)
        meta["kdlab.input"] = f"raw pixels in [0, {pmax:g}], float32, shape {shown}; scaling is inside the graph"
        desc = (f"raw pixels in [0, {pmax:g}] (float32) shaped {shown}; the normalisation (pixels / {pmax:g} - {mean:.6g}) "
                f"/ {std:.6g} is part of the graph")
        return module, meta, desc, lambda b, g: torch.rand(b, *shape, generator=g) * pmax
    formula = (f"x = (pixels / {float(spec['pixel_max']):g} - {float(spec['mean']):.8g}) / {float(spec['std']):.8g}"
               if known else "unknown (the checkpoint records none)")
    meta["kdlab.input"] = f"normalised tensors shaped {shown}: {formula}"
    desc = (f"normalised float32 tensors shaped {shown}, as kdlab trains on; the normalisation is NOT in the graph, "
            f"it is recorded in the metadata (kdlab.input): {formula}")
    with torch.no_grad():
        plain = isinstance(loaded.model.eval()(torch.zeros(2, *shape)), Tensor)
    return (loaded.model if plain else LogitsOnly(loaded.model)), meta, desc, lambda b, g: torch.randn(b, *shape, generator=g)


def _require(packages: Sequence[str], what: str) -> None:
    missing = []
    for name in packages:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"{what} needs {', '.join(missing)}, not installed; run `pip install 'kdlab[onnx]'` "
                          f"(or `pip install {' '.join(missing)}`)")


def check_atol(atol: Any) -> float:
    """``atol`` is a tolerance: a finite number > 0 (a negative one would fail every check and blame the exporter)."""
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not (math.isfinite(atol) and atol > 0):
        raise KDLabError(f"--atol {atol!r}: must be a finite number > 0, the largest |exported - PyTorch| accepted (default 1e-4)")
    return float(atol)


def check_targets(targets: Dict[str, Any], force: bool = False) -> Dict[str, Path]:
    """Every ``{flag: path}`` export target checked before any work (None entries skipped): writable,
    distinct, and not an existing file unless ``force``."""
    paths = {flag: _check_target(out, flag, force) for flag, out in targets.items() if out}
    seen: Dict[Path, str] = {}
    for flag, path in paths.items():
        key = path.resolve()
        if key in seen:
            raise KDLabError(f"{seen[key]} and {flag} name the same file {path}; give each format its own path")
        seen[key] = flag
    return paths


def _check_target(out: str | os.PathLike, flag: str, force: bool = False) -> Path:
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir() and not force:
        raise KDLabError(f"{flag} {path} already exists; pass --force to replace it, or choose another path")
    if path.is_dir():
        raise KDLabError(f"{flag} {path} is a folder; pass a file path such as {path / ('student' + path.suffix)}")
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise KDLabError(f"{flag} {path} lies under {above}, which is a file; pass a path inside a folder")
    check_output_location(path.parent, f"{flag} folder")  # read-only or unwritable fails here, before any work
    return path


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path``, renamed onto it only when the block succeeds; removed otherwise."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {os_error_reason(exc)}; choose another location") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the exported file gets normal permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compare(reference: nn.Module, run: Callable[[Tensor], Tensor], sample: Callable[[int, torch.Generator], Tensor],
             batches: Sequence[int], atol: float, what: str) -> Dict[int, float]:
    """Max |exported - PyTorch| per batch size; raises (nothing is kept) beyond ``atol`` or on non-finite output."""
    g = torch.Generator().manual_seed(0)
    device = next((p.device for p in reference.parameters()), torch.device("cpu"))
    diffs: Dict[int, float] = {}
    for b in batches:
        x = sample(b, g).to(device)
        with torch.inference_mode():
            want = reference(x).float().cpu()
        got = torch.as_tensor(run(x)).float().cpu()
        if got.shape != want.shape:
            raise ExportError(f"{what} output has shape {tuple(got.shape)} at batch {b}, PyTorch {tuple(want.shape)}; "
                              "the file was not written (report this model to kdlab)")
        diff = float((got - want).abs().max()) if got.numel() else 0.0
        if not diff <= atol:  # also catches NaN
            raise ExportError(f"{what} output differs from PyTorch by {diff:.3g} at batch {b} (tolerance {atol:g}); the file "
                              "was not written: the exporter mistranslated an operation of this model (try --opset or --torchscript)")
        diffs[b] = diff
    return diffs


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings, prints or log records from the exporter (torch.export logs whole graphs when it fails):
    the command's output stays its own lines, and a failure one line."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


#: Why ONNX cannot express a model, by a phrase of the innermost error torch.export / torch.onnx raise.
CANNOT_EXPRESS: Tuple[Tuple[str, str], ...] = (
    ("data-dependent", "its forward takes a Python branch on a tensor's value (if/while on a tensor, .item()), which a "
                       "graph cannot hold; use torch.where there"),
    ("No ONNX function found", "it uses an operation with no ONNX translation at opset {opset}; try another --opset"),
    ("Constraints violated", "its forward fixes the batch size (e.g. a reshape to a constant batch), but the file has a "
                             "dynamic batch axis; reshape with x.shape[0] or -1"),
)


def _cannot_express(name: str, exc: BaseException, opset: int) -> str:
    """One line: which model, why ONNX cannot express it (a known cause, else the innermost error's first line)."""
    inner, seen = exc, set()
    while (inner.__cause__ or inner.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).strip()
    first = text.splitlines()[0][:160] if text else "?"
    whole = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)) for e in (exc, inner))
    why = next((reason.format(opset=opset) for phrase, reason in CANNOT_EXPRESS if phrase in whole), None)
    detail = f"{type(inner).__name__}: {first}"
    return f"ONNX cannot express model {name!r}: {f'{why} ({detail})' if why else detail}; the file was not written; try --torchscript"


def _ort_outputs(session: Any, x: Tensor) -> Tensor:
    """One onnxruntime run (a separate function so tests can break it on purpose)."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def export_onnx(source: str | os.PathLike, out: str | os.PathLike, *, checkpoint: str = "best", normalization: str = "graph",
                opset: int = DEFAULT_OPSET, atol: float = 1e-4, batches: Sequence[int] = CHECK_BATCHES,
                force: bool = False) -> ExportResult:
    """Export the student of run folder (or checkpoint file) ``source`` to ``out`` with a dynamic batch axis.

    Written only after onnxruntime reproduces PyTorch within ``atol`` at every size in ``batches``;
    an existing ``out`` is replaced only with ``force``.
    """
    atol = check_atol(atol)
    _require(ONNX_PACKAGES, "ONNX export")
    path = _check_target(out, "--onnx", force)
    loaded = load_student(source, checkpoint)
    module, meta, desc, sample = deployable(loaded, normalization)
    module.eval()
    meta.update({"kdlab.opset": str(opset), "kdlab.parameters": str(count_parameters(loaded.model))})
    import onnx  # optional: onnx
    import onnxruntime as ort  # optional: onnxruntime

    example = sample(2, torch.Generator().manual_seed(1))  # batch > 1, so the batch axis stays symbolic
    try:
        with _quiet():
            program = torch.onnx.export(module, (example,), None, input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                        dynamo=True, verbose=False)
        proto = program.model_proto
    except Exception as exc:  # torch.export raises many types; the innermost cause names what cannot be expressed
        raise ExportError(_cannot_express(loaded.name, exc, opset)) from None
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **meta})
    with _staged(path) as tmp:
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        if isinstance(session.get_inputs()[0].shape[0], int):
            raise ExportError(f"ONNX cannot give model {loaded.name!r} a dynamic batch axis: its forward fixes the batch size "
                              "(e.g. a reshape to a constant batch); reshape with x.shape[0] or -1; the file was not written")
        diffs = _compare(module, lambda x: _ort_outputs(session, x), sample, batches, atol, "onnxruntime")
    return ExportResult(path, "onnx", loaded.path, normalization, desc, diffs, atol, opset, meta)


def export_torchscript(source: str | os.PathLike, out: str | os.PathLike, *, checkpoint: str = "best",
                       normalization: str = "graph", atol: float = 1e-4, batches: Sequence[int] = CHECK_BATCHES,
                       force: bool = False) -> ExportResult:
    """Trace the student to TorchScript (``torch.jit.load``-able without kdlab); checked like :func:`export_onnx`.

    The metadata is stored as the extra file ``kdlab.json``; an existing ``out`` is replaced only with ``force``.
    """
    atol = check_atol(atol)
    path = _check_target(out, "--torchscript", force)
    loaded = load_student(source, checkpoint)
    module, meta, desc, sample = deployable(loaded, normalization)
    module.eval()
    example = sample(2, torch.Generator().manual_seed(1))
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; it still works and loads anywhere libtorch runs
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(module, (example,), check_trace=False)
        except Exception as exc:
            raise ExportError(f"torch.jit.trace could not trace model {loaded.name!r} ({type(exc).__name__}); use --onnx") from None
        with _staged(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={"kdlab.json": json.dumps(meta, sort_keys=True)})
            reloaded = torch.jit.load(str(tmp), map_location="cpu")
            diffs = _compare(module, lambda x: reloaded(x.cpu()).detach(), sample, batches, atol, "TorchScript")
    return ExportResult(path, "torchscript", loaded.path, normalization, desc, diffs, atol, None, meta)
