"""What the command line's parser needs before anything heavy is imported: the names shown in
``--help``, the help formatter, argument types and the command's clock (torch-free)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import NoReturn

from circuitfind.methods.table import METHODS as _ENGINE_METHODS

__all__ = ["ABLATIONS", "METRICS", "RENDER_FORMATS", "TASKS", "available_cpus", "thread_count"]

logger = logging.getLogger("circuitfind.cli")
STARTED = [time.perf_counter()]  # the command's clock: reset when main() starts


# ------------------------------------------------------------------ the names shown in --help
# argparse needs these before anything heavy is imported, so they are torch-free: the methods
# come from the method table itself (circuitfind.methods.table, which imports no torch), the
# ablations, tasks and metrics from the small tables below, which tests/test_cli_fast.py checks
# against the engine's own (circuitfind.patching's ABLATIONS, circuitfind.tasks' TASKS and
# METRICS).
def _methods() -> dict[str, str]:
    """Every method of the table (those registered at run time too) and its summary."""
    return {name: spec.summary for name, spec in _ENGINE_METHODS.items()}


ABLATIONS: dict[str, str] = {
    "resample": "the corrupted prompt's value",
    "mean": "the mean over the task's prompts",
    "mean-positional": "the mean per position",
    "zero": "zero",
}
TASKS: dict[str, str] = {
    "ioi": "indirect object identification (metric: logit_diff)",
    "induction": "random tokens then their repeat (metric: logprob)",
    "greater-than": "'from the year 17YY to the year 17' -> years above YY (metric: prob_diff)",
    "docstring": "Python docstring ':param' -> the next argument (metric: logit_diff)",
    "gendered-pronoun": "'So Mary is a great friend, isn't' -> ' she' (metric: logit_diff)",
    "agreement": "subject-verb agreement across phrases (metric: logit_diff)",
    "mcqa": "a multiple-choice question -> the answer's letter (metric: logit_diff)",
    "arithmetic": "'23+45=' -> '68' (metric: logit_diff)",
    "factual": "'Paris is the capital of' -> ' France' (metric: logit_diff)",
    "sentiment": "a movie review -> ' great' / ' terrible' (metric: logit_diff)",
}
METRICS: dict[str, str] = {
    "logit_diff": "logit(answer) - logit(wrong), higher is better",
    "logprob": "log p(answer), higher is better",
    "prob_diff": "p(answer set) - p(wrong set), higher is better",
    "kl": "KL(clean || run) at the readout, lower is better",
    "accuracy": "fraction of prompts where the answer beats the wrong answer",
}
RENDER_FORMATS = ("svg", "png", "pdf", "gv", "dot")  # circuitfind.render.FORMATS
PLUGINS = (
    "circuitfind.zoo.cli",
    "circuitfind.inspect.cli",
    "circuitfind.bench.cli",
    "circuitfind.explorer.cli",
    "circuitfind.features.cli",
)
# options every subcommand accepts before or after its name
GLOBAL_FLAGS = ("--debug", "-v", "--verbose", "-q", "--quiet", "--threads")
# keyword arguments of the Python API that error messages name, as the CLI spells them
_API_HINTS = {
    "first_token=True": "--first-token",
    "trust_remote_code=True": "--trust-remote-code",
    "tokenizer=": "--tokenizer",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped by paragraph (indented lines kept as written); each option's
    default shown once, and only when it says something (a ``None`` default is described in
    the option's own words)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        paragraphs = []
        for para in text.split("\n\n"):
            if any(line.startswith(" ") for line in para.splitlines()):
                paragraphs.append(textwrap.indent(para, indent))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(para.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


# ---------------------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _whole_number(text: str) -> int:
    """A seed or a count that may be 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be a fraction in (0, 1], e.g. 0.9")
    return value


# ---------------------------------------------------------------------------- threads
def available_cpus() -> int:
    """The CPU cores this process may run on: its affinity mask (``os.sched_getaffinity``),
    capped by a cgroup CPU quota where one is set (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, quota)
    return max(1, n)


def _cgroup_cpus() -> int | None:
    """``ceil(quota / period)`` from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_*``; None if unset."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return max(1, -(-q // p)) if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def thread_count(requested: int | None) -> int:
    """``--threads`` if given, else ``OMP_NUM_THREADS`` if set, else :func:`available_cpus`."""
    if requested:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cpus()


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    n = thread_count(getattr(args, "threads", None))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    logger.info("torch threads: %d", n)
