"""Several processes, one run: data-parallel training under ``torchrun`` (gloo on CPU, NCCL on CUDA).

``torchrun --nproc_per_node N -m kdlab distill …`` starts N copies of the command; each reads its
rank from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``).
:func:`session` joins the process group for a command's duration and ends it with one exit code
on every process; :class:`Context` holds the collectives. How a run trains over the processes
(sharded batches, gradient all-reduce, gathered teacher logits, rank-0 files) is the process
plugin, :mod:`kdlab.train.processes`; methods that update per-sample state (CRD's memory banks)
are refused.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import time
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError

#: Commands that train one model and so can run under torchrun.
DDP_COMMANDS = ("distill", "train-teacher", "train-student")


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def timeout_minutes() -> float:
    """How long a collective may wait: ``$KDLAB_DDP_TIMEOUT_MINUTES`` (default 60). The other ranks wait
    this long at most while rank 0 alone trains a teacher for the cache."""
    try:
        value = float(os.environ.get("KDLAB_DDP_TIMEOUT_MINUTES", "60"))
    except ValueError:
        raise ConfigError(f"KDLAB_DDP_TIMEOUT_MINUTES must be a number of minutes, got {os.environ['KDLAB_DDP_TIMEOUT_MINUTES']!r}") from None
    if not value > 0:
        raise ConfigError(f"KDLAB_DDP_TIMEOUT_MINUTES must be > 0, got {value}")
    return value


def check_batch_size(batch_size: int, world_size: Optional[int] = None, where: str = "batch_size") -> None:
    """One line when the global batch cannot be cut into equal per-rank shares."""
    world = launched_world_size() if world_size is None else world_size
    if world > 1 and batch_size % world:
        raise ConfigError(f"{where}={batch_size} is the global batch and must be divisible by the {world} processes "
                          f"torchrun started; pass --batch-size {max(world, batch_size - batch_size % world)} or a "
                          f"multiple of {world}")


class Context:
    """The process group as the trainer sees it: rank, world size and the collectives it needs."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def _on_wire(self, t: Tensor) -> Tensor:
        """Tensors travel where they are: CPU ones through gloo, CUDA ones through NCCL."""
        return t

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        wire = self._on_wire(t.contiguous())
        dist.all_reduce(wire, op=dist.ReduceOp.SUM)
        return wire.to(t.device)

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        return self.all_reduce_sum(t) / self.world_size

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj if self.is_main() else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def broadcast_tensors(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` on every rank with rank 0's values (one flat broadcast per dtype)."""
        by_dtype: Dict[torch.dtype, List[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = self._on_wire(torch.cat([t.detach().reshape(-1) for t in group]))
            dist.broadcast(flat, src=0)
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view_as(t).to(t.device))

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def sync_gradients(self, params: Sequence[torch.nn.Parameter], weight: float, extra: float = 0.0) -> float:
        """Sum ``weight · grad`` over ranks into every parameter's ``.grad``, in one all-reduce;
        returns the sum of ``extra`` over ranks (carried in the same message).

        A parameter without a gradient on a rank contributes zeros; it gets a gradient on every
        rank when any rank produced one (so the optimizers stay identical), else stays None.
        """
        if not params:
            return float(self.all_reduce_sum(torch.tensor([extra], dtype=torch.float64)).item())
        sample = next(iter(params))
        parts = [p.grad.reshape(-1) * weight if p.grad is not None else torch.zeros(p.numel(), dtype=sample.dtype, device=p.device)
                 for p in params]
        flags = torch.tensor([*(p.grad is not None for p in params), extra], dtype=sample.dtype, device=sample.device)
        flat = self.all_reduce_sum(torch.cat([*[x.to(sample.dtype) for x in parts], flags]))
        sizes = [p.numel() for p in params]
        values, flags = flat.narrow(0, 0, sum(sizes)), flat.narrow(0, sum(sizes), len(sizes) + 1)
        total_extra = float(flags[-1])
        for p, part, flag in zip(params, values.split(sizes), flags.tolist()):
            if flag > 0:
                g = part.view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
        return total_extra

    def reduce_rows(self, rows: Tensor, weights: Optional[Sequence[float]]) -> Tensor:
        """The epoch's (steps, terms) loss rows of the global batches: per-rank rows weighted by each
        rank's share of its batch, summed over ranks (a user's loader: the mean over ranks)."""
        if weights is None:
            return self.all_reduce_mean(rows)
        w = torch.tensor(list(weights), dtype=rows.dtype, device=rows.device).unsqueeze(1)
        return self.all_reduce_sum(rows * w)

    @torch.no_grad()
    def teacher_logits(self, teacher: Any, x: Tensor, batch_size: int, members: bool = False) -> Tensor:
        """Training-set teacher logits: each rank computes a contiguous 1/N and all gather the table."""
        n = x.shape[0]
        bounds = [n * r // self.world_size for r in range(self.world_size + 1)]
        mine = x.narrow(0, bounds[self.rank], bounds[self.rank + 1] - bounds[self.rank])
        local = teacher.logits_for(mine, batch_size, members=True) if members else teacher.logits_for(mine, batch_size)
        width = max(bounds[r + 1] - bounds[r] for r in range(self.world_size))
        padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded.narrow(0, 0, local.shape[0]).copy_(local)
        wire = self._on_wire(padded)
        pieces = [torch.empty_like(wire) for _ in range(self.world_size)]
        dist.all_gather(pieces, wire)
        return torch.cat([p.narrow(0, 0, bounds[r + 1] - bounds[r]) for r, p in enumerate(pieces)]).to(x.device)

    def check_batches(self, n: int, batch_size: int) -> None:
        """Every global batch, the last included, must give each process at least one sample."""
        check_batch_size(batch_size, self.world_size)
        last = n % batch_size
        if 0 < last < self.world_size:
            raise ConfigError(f"the last batch of each epoch holds {last} of {n} samples, fewer than the "
                              f"{self.world_size} processes; choose a batch size that leaves at least {self.world_size}")

    def check_method(self, method: Any) -> None:
        if method.needs.per_sample_state:
            name = method.method_name or type(method).__name__
            raise ConfigError(f"method {name} keeps per-sample state that each process would update only for its own "
                              "shard; it runs in one process only (launch without torchrun)")


# ---------------------------------------------------------------------- the process's context
_CTX: Optional[Context] = None
_SUSPENDED = 0


def context() -> Optional[Context]:
    """The active context: inside :func:`session` (or a process group the caller initialised) with
    more than one process, unless :func:`local` suspended it; None in one process."""
    global _CTX
    if _SUSPENDED:
        return None
    if _CTX is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) else torch.device("cpu")
        _CTX = Context(dist.get_rank(), dist.get_world_size(), device)
    return _CTX


def is_main() -> bool:
    """True in one process and on rank 0."""
    ctx = context()
    return ctx is None or ctx.is_main()


def barrier() -> None:
    ctx = context()
    if ctx is not None:
        ctx.barrier()


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Train in this process alone for a while (rank 0 filling the teacher cache)."""
    global _SUSPENDED
    _SUSPENDED += 1
    try:
        yield
    finally:
        _SUSPENDED -= 1


@contextlib.contextmanager
def main_first() -> Iterator[bool]:
    """Rank 0 runs the body alone (yielding True), then the others run it (yielding False):
    e.g. rank 0 trains and caches a teacher, the others then find it in the cache."""
    ctx = context()
    if ctx is None:
        yield True
        return
    if ctx.is_main():
        with local():
            yield True
        ctx.barrier()
    else:
        ctx.barrier()
        yield False


@contextlib.contextmanager
def session() -> Iterator[Optional[Context]]:
    """Join the process group torchrun describes (nothing in one process), leave it at the end.

    CPU tensors go through gloo; on a machine with CUDA, ``cuda`` means ``cuda:LOCAL_RANK`` and
    CUDA tensors go through NCCL (one ``cpu:gloo,cuda:nccl`` group serves both). The group is
    built on a store kdlab keeps (:func:`_join_store`), which :func:`leave` uses for the exit.
    """
    global _CTX, _STORE
    world = launched_world_size()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield context()
        return
    if not dist.is_available():
        raise ConfigError("torch.distributed is not available in this PyTorch build; launch without torchrun")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "cpu:gloo,cuda:nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes())
    rank = launched_rank()
    _STORE = _join_store(rank, world, timeout)
    dist.init_process_group(backend, store=dist.PrefixStore("kdlab/group", _STORE), rank=rank, world_size=world, timeout=timeout)
    # every process fully connected before any can go on: a process that refuses at once would
    # otherwise destroy the group (closing its gloo pairs) while a slower peer is still connecting,
    # and that peer would die with "Connection closed by peer" instead of giving the same refusal.
    # A CPU tensor: it goes through gloo, the mesh that must be complete (NCCL connects lazily).
    dist.all_reduce(torch.zeros(1))
    _CTX = Context(dist.get_rank(), dist.get_world_size(), dev)
    try:
        yield _CTX
    finally:
        _CTX = None
        dist.destroy_process_group()


_STORE: Optional[Any] = None

#: How long a process that has finished waits at the exit for the others to finish too (seconds).
EXIT_RENDEZVOUS_SECONDS = 30.0


def _join_store(rank: int, world: int, timeout: datetime.timedelta) -> Any:
    """The launch's key-value store, as ``env://`` would open it (torchrun's agent hosts it, or rank 0).

    kdlab opens it itself, rather than through ``init_method="env://"``, to keep a handle for the
    exit rendezvous without reaching for torch's private default-store accessor.
    """
    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set; launch with torchrun "
                          "(torchrun --nproc_per_node N -m kdlab ...)") from None
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return dist.TCPStore(host, port, world_size=world, is_master=rank == 0 and not agent, timeout=timeout,
                         multi_tenant=True, wait_for_workers=False)


def leave(code: int) -> NoReturn:
    """End a torchrun worker with ``code``, after every process of the launch has reached this point.

    Why not a plain return from ``main``:

    * torchrun stops the whole launch as soon as one worker exits non-zero: it sends SIGTERM to the
      others, which then end with -15 instead of their own code, although they were about to print
      the same refusal. So the workers meet first, through the store (not a collective, which
      could pair with a collective a failed peer left pending), and exit together; a SIGTERM or
      SIGINT that still arrives during the exit ends the process with ``code`` too.
    * Interpreter finalisation after a process group can race with the communication library's
      own threads (``terminate called without an active exception``, SIGABRT). The group is
      already destroyed here and nothing else is left to tear down, so the process ends with
      ``os._exit`` after flushing its output.

    A process that never reaches this point (a peer stopped in the middle of a collective) is
    ended by torchrun as usual; the others wait at most :data:`EXIT_RENDEZVOUS_SECONDS`.
    """
    def _exit_now(_signum: int = 0, _frame: Any = None) -> None:
        _flush_stdio()
        os._exit(code)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):  # not the main thread: keep the default
            signal.signal(sig, _exit_now)
    store, world = _STORE, launched_world_size()
    if store is not None and world > 1 and not _INTERRUPTED:  # Ctrl-C: a peer may sit in a collective
        # that only this process's exit (its sockets closing) can end, so it must not be waited for
        with contextlib.suppress(Exception):  # the store's host may be gone: exit regardless
            store.add("kdlab/exit", 1)
            deadline = time.monotonic() + EXIT_RENDEZVOUS_SECONDS
            while store.add("kdlab/exit", 0) < world and time.monotonic() < deadline:
                time.sleep(0.02)
    _exit_now()


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def owns_group() -> bool:
    """True inside a :func:`session` that created the process group (the CLI under torchrun)."""
    return _STORE is not None


def is_peer_failure(exc: Optional[BaseException]) -> bool:
    """Whether ``exc`` is a collective that failed because another process of the launch went away."""
    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if isinstance(k, type))
    text = str(exc)
    return (bool(kinds) and isinstance(exc, kinds)) or "Connection closed by peer" in text or "Connection reset by peer" in text


def owns_session() -> bool:
    """True when :func:`session` will create the process group here (torchrun, not yet joined)."""
    return launched_world_size() > 1 and not (dist.is_available() and dist.is_initialized())


_INTERRUPTED = False


def interrupted() -> bool:
    """Whether Ctrl-C reached this torchrun worker (see :func:`interrupt_once`)."""
    return _INTERRUPTED


@contextlib.contextmanager
def interrupt_once() -> Iterator[None]:
    """Ctrl-C under torchrun reaches every worker twice (the terminal's SIGINT, then the agent's
    forwarded one): the first raises KeyboardInterrupt as usual, later ones are ignored, so the
    one-line "interrupted" message is not cut by a second traceback. A worker whose SIGINT arrived
    while it waited in a collective sees that collective fail when an interrupted peer exits:
    :func:`interrupted` tells the CLI it was the interrupt."""
    def _first(_signum: int, _frame: Any) -> None:
        global _INTERRUPTED
        _INTERRUPTED = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, _first)
    except (ValueError, OSError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
