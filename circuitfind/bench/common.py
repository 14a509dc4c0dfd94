"""What every benchmark report shares: the stamp (command, machine, CPU model, versions, seed,
date), timing (median of repeated runs; safe runs that record failures instead of raising),
markdown tables, and writing ``NAME.md`` + ``NAME.json`` under the output directory with one
header format (:meth:`Report.header`)."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from circuitfind.machine import cpu_name

__all__ = [
    "Outcome",
    "Report",
    "Timing",
    "command_line",
    "cpu_name",
    "fmt",
    "machine",
    "md_table",
    "set_command",
    "stamp",
    "time_it",
    "timed",
    "versions",
]

logger = logging.getLogger(__name__)

_COMMAND: list[str] = []


def set_command(command: str) -> None:
    """Record the command that is running (the CLI calls this with what the user typed)."""
    _COMMAND[:] = [command]


def command_line() -> str:
    """The command that is running (as set by :func:`set_command`; else this process's argv)."""
    if _COMMAND:
        return _COMMAND[0]
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """CPU, cores, torch threads, GPU (if any) and load average of this machine."""
    gpu = None
    if torch.cuda.is_available():
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        }
    return {
        "cpu": cpu_name(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "os": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the numbers depend on."""
    import numpy
    import transformers

    from circuitfind import __version__

    out = {
        "circuitfind": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import matplotlib

        out["matplotlib"] = matplotlib.__version__
    except ImportError:
        out["matplotlib"] = "missing"
    return out


def stamp(seed: int, quick: bool, command: str | None = None) -> dict[str, Any]:
    """Where a set of numbers came from."""
    return {
        "command": command or command_line(),
        "seed": seed,
        "quick": quick,
        "time_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "started": time.time(),
        "machine": machine(),
        "versions": versions(),
    }


@dataclass
class Outcome:
    """The result of one benchmark case: a value, or why there is none."""

    status: str  # ok | failed | timeout | skipped
    value: Any = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "seconds": round(self.seconds, 3)}


@dataclass
class Timing:
    """Wall times of repeated runs; ``seconds`` is their median."""

    runs: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_it(fn: Callable[[], Any], repeat: int, warmup: bool = True) -> Timing:
    """Median-of-``repeat`` wall time of ``fn`` (after one untimed warm-up call)."""
    if warmup:
        fn()
    t = Timing()
    for _ in range(max(1, repeat)):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        t.runs.append(time.perf_counter() - start)
    return t


def timed(fn: Callable[[], Any], *, budget_s: float | None = None, what: str = "") -> Outcome:
    """Run ``fn``; a raised exception becomes a ``failed`` outcome (recorded, not raised), and a
    run that took longer than ``budget_s`` is kept but marked ``timeout`` (runs are not killed:
    the budget tells the reader the case is too slow to be part of the suite)."""
    t0 = time.perf_counter()
    try:
        value = fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        dt = time.perf_counter() - t0
        logger.warning("%s failed: %s", what or "case", exc)
        logger.debug("%s", traceback.format_exc())
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return Outcome("failed", error=msg, seconds=dt)
    dt = time.perf_counter() - t0
    if budget_s is not None and dt > budget_s:
        return Outcome(
            "timeout", value=value, error=f"took {dt:.0f} s > {budget_s:.0f} s", seconds=dt
        )
    return Outcome("ok", value=value, seconds=dt)


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table ('n/a' for None/NaN)."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        if x != 0 and (abs(x) < 10 ** (-digits) or abs(x) >= 1e6):
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table (cells formatted by :func:`fmt`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return [*lines, ""]


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


@dataclass
class Report:
    """A markdown report and its raw JSON, written side by side as ``NAME.md``/``NAME.json``."""

    name: str
    title: str
    stamp: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def header(self) -> list[str]:
        """The one header every report starts with: title, command, seed, date, wall time,
        machine (CPU model, cores, threads, GPU, load), versions and the raw-results file."""
        s = self.stamp
        m = s["machine"]
        gpu = m["gpu"]["name"] if m.get("gpu") else "none"
        v = ", ".join(f"{k} {val}" for k, val in s["versions"].items())
        load = m.get("load_average")
        wall = s.get("wall_s")
        return [
            f"# {self.title}",
            "",
            f"Command: `{s['command']}`  ",
            f"Seed: {s['seed']}; {'quick' if s['quick'] else 'full'} run, started {s['time_utc']}"
            + (f"; wall time {wall:.0f} s" if wall is not None else "")
            + "  ",
            f"Machine: {m['cpu']} ({m['arch']}), {m['cores']} cores, "
            f"{m['torch_threads']} torch threads, GPU: {gpu}"
            + (f"; load average at start {', '.join(f'{x:.1f}' for x in load)}" if load else "")
            + f"; {m['os']}  ",
            f"Versions: {v}  ",
            f"Raw results: [`{self.name}.json`]({self.name}.json). Every number below comes from "
            "that command.",
            "",
        ]

    def plot_path(self, out_dir: Path, suffix: str) -> Path:
        path = out_dir / f"{self.name}_{suffix}.png"
        self.files.append(path.name)
        return path

    def write(self, out_dir: Path) -> dict[str, Any]:
        out_dir.mkdir(parents=True, exist_ok=True)
        if "started" in self.stamp and "wall_s" not in self.stamp:
            self.stamp["wall_s"] = round(time.time() - self.stamp["started"], 1)
        md = out_dir / f"{self.name}.md"
        js = out_dir / f"{self.name}.json"
        md.write_text("\n".join([*self.header(), *self.lines]).rstrip() + "\n")
        payload = {"stamp": self.stamp, **self.data, "plots": self.files}
        js.write_text(json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n")
        return {
            "markdown": str(md),
            "json": str(js),
            "plots": [str(out_dir / f) for f in self.files],
        }
