"""Memory figures: byte sizes, what a device has free, and a deterministic peak meter.

:class:`PeakMeter` counts the bytes of live tensor storages created while it is active (a
``TorchDispatchMode`` sees every tensor an aten op returns, forward and backward; a storage
counts from its first tensor until its last one dies). It is allocator-free, so it measures the
same figure on CPU, CUDA and ``meta`` tensors, and the same figure every run: the memory plan is
tested against it and the benchmarks reuse it. Tensors that existed before the meter started
(the model's parameters) are not counted; add them yourself.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from circuitfind.errors import InputError

__all__ = ["PeakMeter", "format_bytes", "free_bytes", "measure_peak", "parse_bytes"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str | int | float) -> int:
    """``"4GiB"``, ``"512 MB"``, ``"1.5g"`` or a number of bytes -> bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise InputError(f"a memory budget must be positive; got {text!r}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise InputError(
            f"cannot read the memory size {text!r}: write a positive number with a unit, "
            "e.g. 4GiB, 512MiB, 2GB or 1000000 (bytes)"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """Bytes in binary units, three significant figures (``1.23 GiB``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def free_bytes(device: torch.device | str) -> int:
    """What ``device`` has free now: ``torch.cuda.mem_get_info`` on a GPU, the available RAM on
    the CPU (and for any other device type, whose memory is not queryable here)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _available_ram()


def _available_ram() -> int:
    """Available RAM: psutil's figure where psutil is installed, else Linux's MemAvailable
    (what psutil reads there), else the free pages ``os.sysconf`` reports."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class PeakMeter(TorchDispatchMode):
    """Counts live tensor-storage bytes created inside the block; ``peak`` is their maximum.

    Use ``with PeakMeter() as meter: ...``; then ``meter.peak`` (bytes), ``meter.live`` (bytes
    still alive) and ``meter.peak_by_device`` (peaks per device type). Storages are keyed by
    their data pointer and device, so views and ``out=`` results share one entry; a view of a
    tensor made before the meter started (a parameter) is not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.live_by_device: dict[str, int] = {}
        self.peak_by_device: dict[str, int] = {}
        self._refs: dict[tuple[str, int], list[int]] = {}  # key -> [tensors alive, nbytes]
        self._lock = threading.Lock()

    def _release(self, key: tuple[str, int]) -> None:
        with self._lock:
            entry = self._refs.get(key)
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] == 0:
                del self._refs[key]
                self.live -= entry[1]
                self.live_by_device[key[0]] -= entry[1]

    @staticmethod
    def _key(t: torch.Tensor) -> tuple[str, int]:
        device = t.device.type
        if device == "meta":  # meta storages have no address: key them by the tensor's base
            base = t._base if t._base is not None else t
            return device, id(base)
        return device, t.untyped_storage().data_ptr()

    def _track(self, t: torch.Tensor, inputs: set[tuple[str, int]]) -> None:
        nbytes = t.untyped_storage().nbytes()
        if nbytes == 0:
            return
        key = self._key(t)
        device = key[0]
        with self._lock:
            entry = self._refs.get(key)
            if entry is None and key in inputs:
                return  # a view of (or in place on) a tensor made before the meter: not new
            if entry is None:
                self._refs[key] = [1, nbytes]
                self.live += nbytes
                self.live_by_device[device] = self.live_by_device.get(device, 0) + nbytes
                self.peak = max(self.peak, self.live)
                self.peak_by_device[device] = max(
                    self.peak_by_device.get(device, 0), self.live_by_device[device]
                )
            else:
                entry[0] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            self._key(t)
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and not t.is_sparse
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_sparse:
                self._track(t, inputs)
        return out


@contextmanager
def measure_peak() -> Iterator[PeakMeter]:
    """``with measure_peak() as m: ...`` then ``m.peak``: see :class:`PeakMeter`."""
    meter = PeakMeter()
    with meter:
        yield meter
