"""Runs that keep to themselves: fingerprints, checkpoints, output locks, atomic writes.

- :func:`run_fingerprint` hashes everything a result depends on (the model's weights and
  shape, the task's token tensors and metric, the method and its options, the ablation, the
  seed, the package versions) into named parts; a :class:`Checkpointer` stores them in its file
  and refuses to resume a file whose parts differ, naming them.
- :class:`OutputLock` makes one process the only writer of a directory (a lock file with its
  pid and host; a lock whose process is gone is taken over with a warning).
- :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_torch_save` write a
  temporary file beside the target and rename it over the target, so readers see the old file
  or the new one, never half of one.
- The :class:`Checkpointer` turns SIGINT and SIGTERM into a save at the next safe point of the
  loop (a second Ctrl-C stops at once), saves every ``every`` work units and every
  ``every_s`` seconds, and raises :class:`Interrupted` whose message says exactly what was kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from circuitfind.errors import InputError

__all__ = [
    "Checkpointer",
    "Interrupted",
    "OutputLock",
    "ablation_fingerprint",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_out_dir",
    "model_fingerprint",
    "prepare_out_dir",
    "run_fingerprint",
    "safe_torch_load",
    "task_fingerprint",
    "terminate_as_interrupt",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # of the checkpoint files (1: the unfingerprinted files of circuitfind <= 0.1)


# ---------------------------------------------------------------------------- atomic writes
def _file_mode(path: Path) -> int:
    """The mode of ``path`` if it exists, else what ``open(path, "w")`` would create."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename
    (readers never see a half-written file; a crash leaves the previous file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; keep what a plain write gives
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """``torch.save`` through a temporary file and a rename."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a file this package wrote; anything unreadable (a
    truncated file, a pickle of arbitrary objects) is an ``InputError`` that says to delete it."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise InputError(
            f"{what} {str(path)!r} cannot be read ({type(exc).__name__}: it is truncated, "
            f"corrupt or not a circuitfind file); delete it to start afresh"
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"{what} {str(path)!r} is not a circuitfind checkpoint; delete it")
    return state


# ---------------------------------------------------------------------------- fingerprints
def _sha(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()


def _tensor_bytes(t: Any, sample: int | None = None) -> bytes:
    """Shape, dtype and values (all, or ``sample`` evenly strided ones) of a tensor."""
    import torch

    if t is None:
        return b"none"
    t = t.detach()
    head = f"{tuple(t.shape)}|{t.dtype}|".encode()
    flat = t.reshape(-1)
    if sample is not None and flat.numel() > sample:
        step = flat.numel() // sample
        flat = flat[::step][:sample]
    if flat.dtype.is_floating_point and flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return head + flat.contiguous().cpu().numpy().tobytes()


def model_fingerprint(model: Any, sample: int = 16384) -> str:
    """A hash of the model: its shape and architecture (``cfg`` without the name), and every
    parameter's name, shape, dtype and ``sample`` evenly strided values, bit for bit.

    Cheap (no pass over all the weights: about 0.05 s for GPT-2 small on one core) and
    independent of thread counts; a fine-tune moves the sampled values of every matrix it
    touches. (An edit of a single weight outside the sample would go unseen.)
    """
    import torch

    cfg = getattr(model, "cfg", None)
    desc = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else {}
    desc.pop("name", None)
    chunks = [json.dumps(desc, sort_keys=True, default=str).encode()]
    module = getattr(model, "hf_model", model)
    params = (
        list(module.named_parameters()) if isinstance(module, torch.nn.Module) else []
    )  # tied weights appear once
    with torch.no_grad():
        for name, p in params:
            chunks += [name.encode(), _tensor_bytes(p, sample)]
    return _sha(*chunks)


def task_fingerprint(task: Any) -> str:
    """A hash of a task's prompts and answers (its token tensors, readout positions and
    attention mask) and its metric's name."""
    chunks = [
        _tensor_bytes(getattr(task, k, None))
        for k in ("clean", "corrupted", "readout", "answer", "wrong", "attention_mask")
    ]
    metric = getattr(task, "metric", None)
    chunks.append(str(getattr(metric, "name", metric)).encode())
    return _sha(*chunks)


def _versions() -> dict[str, str]:
    import torch

    from circuitfind.version import __version__

    out = {"circuitfind": __version__, "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    return out


def ablation_fingerprint(ablation: Any) -> str:
    """An ablation's kind and, for mean ablations, a hash of the means it holds."""
    kind = str(getattr(ablation, "kind", ablation))
    mean = getattr(ablation, "_mean", None)
    return kind if mean is None else f"{kind}:{_sha(_tensor_bytes(mean, 4096))[:16]}"


def run_fingerprint(
    *,
    model: Any,
    task: Any,
    method: str,
    options: dict[str, Any] | None = None,
    ablation: Any = None,
    metric: Any = None,
    seed: int | None = None,
) -> dict[str, str]:
    """The named parts of a run's identity, each a short hash or a plain value.

    Parts: ``model`` (weights and shape), ``task`` (token tensors and the task's metric),
    ``metric`` (the metric the method uses when it is not the task's), ``method``, ``options``
    (JSON of the method's options that change its result or the checkpoint's layout),
    ``ablation`` (an ``Ablation`` or its kind), ``seed`` and ``versions``.
    """
    metric_name = getattr(metric, "name", metric)
    return {
        "model": model_fingerprint(model)[:16],
        "task": task_fingerprint(task)[:16],
        "metric": str(metric_name),
        "method": method,
        "options": json.dumps(options or {}, sort_keys=True, default=str),
        "ablation": ablation_fingerprint(ablation),
        "seed": str(seed),
        "versions": json.dumps(_versions(), sort_keys=True),
    }


# ---------------------------------------------------------------------------- output directories
def _safe(name: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-") or "x"


def default_out_dir(
    model: str,
    task: str,
    method: str,
    ablation: str,
    seed: int | None,
    n: int | None,
    root: str | os.PathLike[str] = "circuits",
) -> Path:
    """``circuits/{model}_{task}_{method}_{ablation}_seed{seed}_n{n}``: runs that differ in any
    of these get their own directory."""
    parts = [_safe(model), _safe(task), _safe(method), _safe(ablation), f"seed{seed}", f"n{n}"]
    return Path(root) / "_".join(parts)


def prepare_out_dir(path: str | os.PathLike[str], command: str | None = None) -> Path:
    """Create ``path`` and check it can be written, before any work is done.

    An existing file in its place, a directory that cannot be created, or one that cannot be
    written is an ``InputError`` naming the fix. Results of another run already there (a
    ``circuit.json`` whose recorded command differs from ``command``) are announced with a
    warning: they will be replaced.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"output {str(path)!r} is a file, not a directory; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"cannot write to output directory {str(path)!r} ({exc.strerror or exc}); "
            "choose another --out or fix its permissions"
        ) from None
    existing = path / "circuit.json"
    if existing.is_file():
        try:
            old = json.loads(existing.read_text(encoding="utf-8")).get("meta", {}).get("command")
        except (OSError, ValueError, AttributeError):
            old = None
        if command is None or old != command:
            logger.warning(
                "%s holds results of another run%s; they will be replaced",
                path,
                f" ({old})" if old else "",
            )
    return path


# ---------------------------------------------------------------------------- locks
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


class OutputLock:
    """One writer per directory (or per file: ``name`` is the lock file's name).

    ``with OutputLock(out):`` creates ``out/.circuitfind.lock`` holding this process's pid,
    host and start time, and removes it on exit. A lock held by a live process is an
    ``InputError`` naming its pid; a lock whose process no longer runs (same host) is taken over
    with a warning; a lock from another host is refused (its process cannot be checked).
    """

    def __init__(self, directory: str | os.PathLike[str], name: str = ".circuitfind.lock"):
        self.path = Path(directory) / name
        self._held = False

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self._info()).encode()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_existing()
                continue  # the stale lock was removed: try again
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._held = True
            return
        raise InputError(f"could not take the lock {self.path}; delete it if no run uses it")

    def _check_existing(self) -> None:
        """Refuse a live owner; remove a stale lock (with a warning) so acquire can retry."""
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(owner["pid"]), str(owner["host"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("taking over unreadable lock file %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        where = self.path.parent
        if host != socket.gethostname():
            raise InputError(
                f"{where} is in use by a circuitfind run on host {host} (pid {pid}); wait for "
                f"it, choose another --out, or delete {self.path} if that run is over"
            )
        if _alive(pid):
            raise InputError(
                f"{where} is in use by another circuitfind run (pid {pid}); wait for it to "
                f"finish, choose another --out, or delete {self.path} if no run uses it"
            )
        logger.warning("taking over the lock of %s from pid %d, which no longer runs", where, pid)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            if int(owner.get("pid", -1)) == os.getpid():
                self.path.unlink()
        except (OSError, ValueError, TypeError):
            pass

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------- interrupts
class Interrupted(KeyboardInterrupt):
    """An interrupted run; ``str(exc)`` says what was kept (or that nothing was)."""


@contextlib.contextmanager
def _deferred_signals(on_signal: Callable[[int], None]) -> Iterator[bool]:
    """Route SIGINT and SIGTERM to ``on_signal`` while inside (main thread only; the previous
    handlers are restored on exit). Yields whether handlers were installed."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        on_signal(signum)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        yield True
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class Checkpointer:
    """Save and resume the state of a long loop (exact patching, ACDC).

    Usage in a method::

        ckpt = Checkpointer(path, fingerprint, total=n_units, unit="edges", what="ACDC")
        with ckpt:
            state = ckpt.load()          # None, or the dict last saved (resuming is logged)
            ...
            for ...:
                ...                      # one unit of work, leaving the state consistent
                ckpt.maybe_save(lambda: {...}, done)
        ckpt.done()                      # success: the file is removed

    ``maybe_save`` is called at points where the state is consistent; it saves when ``every``
    units or ``every_s`` seconds passed since the last save, and, after SIGINT or SIGTERM, saves
    and raises :class:`Interrupted` whose message says how many units were kept and where. A
    second SIGINT raises at once (what the file holds is then the last save, and the message
    says so). With ``path=None`` nothing is saved or installed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        fingerprint: dict[str, str],
        *,
        total: int,
        unit: str = "edges",
        what: str = "run",
        every: int = 1000,
        every_s: float = 60.0,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = dict(fingerprint)
        self.total, self.unit, self.what = int(total), unit, what
        self.every, self.every_s = max(1, int(every)), float(every_s)
        self.saved_done = 0  # units held by the file on disk
        self._done = 0
        self._last_save = time.monotonic()
        self._signal: int | None = None
        self._stack: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Checkpointer:
        self._stack = contextlib.ExitStack()
        if self.path is not None:
            self._stack.enter_context(OutputLock(self.path.parent, self.path.name + ".lock"))
            self._stack.enter_context(_deferred_signals(self._on_signal))
        self._last_save = time.monotonic()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        hard = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if hard and not isinstance(exc, Interrupted):  # no save at a safe point
            raise Interrupted(self._message(saved_now=False)) from None

    def _on_signal(self, signum: int) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self._signal = signum
        name = signal.Signals(signum).name
        logger.warning(
            "%s received: %s stops at the next safe point and saves (Ctrl-C again stops now)",
            name,
            self.what,
        )

    def _message(self, saved_now: bool) -> str:
        head = f"{self.what} interrupted"
        if self.path is None:
            return f"{head} after {self._done} of {self.total} {self.unit}; nothing was kept"
        if self.saved_done == 0:
            return f"{head} before any of its {self.total} {self.unit} was saved; nothing was kept"
        when = "" if saved_now else " (at its last checkpoint)"
        return (
            f"{head}: {self.saved_done} of {self.total} {self.unit} kept{when} in {self.path}; "
            "run the same command again to resume"
        )

    # ------------------------------------------------------------------ state
    def load(self) -> dict[str, Any] | None:
        """The state saved by an earlier run of the same fingerprint, or None.

        A file of another run is an ``InputError`` naming the parts that differ; an unreadable
        file one that says to delete it. Resuming is logged (WARNING) in one line.
        """
        if self.path is None or not self.path.is_file():
            return None
        saved = safe_torch_load(self.path)
        if saved.get("format") != FORMAT_VERSION or not isinstance(saved.get("fingerprint"), dict):
            raise InputError(
                f"checkpoint {str(self.path)!r} was written by an older circuitfind and cannot "
                "be matched to this run; delete it to start afresh"
            )
        theirs = saved["fingerprint"]
        differ = [
            k
            for k in sorted(set(theirs) | set(self.fingerprint))
            if theirs.get(k) != self.fingerprint.get(k)
        ]
        if differ:
            raise InputError(
                f"checkpoint {str(self.path)!r} belongs to another run (its {', '.join(differ)} "
                "differ); delete it to start afresh, or choose another --out"
            )
        if "state" not in saved or not isinstance(saved.get("done"), int):
            raise InputError(f"checkpoint {str(self.path)!r} is incomplete; delete it")
        self.saved_done = self._done = int(saved["done"])
        logger.warning(
            "resuming %s from %s: %d of %d %s already done",
            self.what,
            self.path,
            self.saved_done,
            self.total,
            self.unit,
        )
        return dict(saved["state"])

    def save(self, state: dict[str, Any], done: int) -> None:
        """Save now (atomically)."""
        if self.path is None:
            return
        atomic_torch_save(
            self.path,
            {
                "format": FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "done": int(done),
                "state": state,
            },
        )
        self.saved_done = int(done)
        self._last_save = time.monotonic()

    def maybe_save(self, state: Callable[[], dict[str, Any]] | dict[str, Any], done: int) -> None:
        """A safe point: ``done`` units finished and ``state`` (or ``state()``) is consistent.

        Saves when due; after a signal, saves and raises :class:`Interrupted`."""
        self._done = int(done)
        if self.path is None:
            if self._signal is not None:  # pragma: no cover - no handlers without a path
                raise Interrupted(self._message(saved_now=True))
            return
        due = (
            self._signal is not None
            or done - self.saved_done >= self.every
            or time.monotonic() - self._last_save >= self.every_s
        )
        if due and done > self.saved_done:
            self.save(state() if callable(state) else state, done)
        if self._signal is not None:
            raise Interrupted(self._message(saved_now=True))

    def done(self) -> None:
        """The loop finished: remove the checkpoint (the result is the caller's to keep)."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C (main thread only), so a
    terminated run ends with its message and exit code 130 instead of silently."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
