"""The speed suite's cases: the shapes and settings it runs (``QUICK``, ``FULL``) and the models
and tasks it times (a random-weight GPT-2 of a shape, or a zoo model with its task)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FULL",
    "GPT2_SMALL",
    "METHOD_NAMES",
    "QUICK",
    "Case",
    "Shape",
    "SpeedConfig",
    "make_case",
    "random_case",
    "random_gpt2",
    "random_task",
    "zoo_case",
]

METHOD_NAMES = ("exact", "acdc", "eap", "eap-ig-inputs", "eap-ig-activations", "node")
"""The methods the suite times, in report order (the keys of ``rules.pass_rules``)."""


@dataclass(frozen=True)
class Shape:
    """A GPT-2-family shape: layers x heads, model width (d_head = d_model / heads)."""

    layers: int
    heads: int
    d_model: int

    @property
    def label(self) -> str:
        return f"{self.layers}x{self.heads} d{self.d_model}"


GPT2_SMALL = Shape(12, 12, 768)


@dataclass(frozen=True)
class SpeedConfig:
    """What the speed suite runs. ``QUICK`` and ``FULL`` are the two shipped settings."""

    shape: Shape = GPT2_SMALL
    prompts: int = 32
    tokens: int = 16
    repeat: int = 3
    ig_steps: int = 5
    methods: tuple[str, ...] = METHOD_NAMES
    # Exact / ACDC / node run for real when their estimated time is below this; above it, they
    # are extrapolated from a stratified sample of their passes.
    max_full_s: float = 300.0
    exact_receivers_per_layer: int = 2
    exact_sample_senders: int = 8  # senders per sampled receiver (in the engine's passes)
    max_tokens_per_pass: int | None = None  # None: the engine's default (tokens_per_pass)
    scaling_shape: Shape = GPT2_SMALL
    scaling_prompts: tuple[int, ...] = (8, 16, 32, 64)
    scaling_shapes: tuple[Shape, ...] = (
        Shape(2, 4, 256),
        Shape(4, 8, 512),
        Shape(8, 12, 768),
        Shape(12, 12, 768),
    )
    scaling_repeat: int = 1
    zoo: tuple[str, ...] = ("induction-2l", "ioi", "greater-than")
    zoo_prompts: int = 32
    autocircuit: bool = True
    build_venv: bool = True
    autocircuit_venv: Path | None = (
        None  # default: $CIRCUITFIND_AUTOCIRCUIT_VENV or .venv-autocircuit
    )
    autocircuit_shape: Shape = GPT2_SMALL  # EAP / EAP-IG / per-edge exact timing
    autocircuit_small_shape: Shape = Shape(2, 4, 256)  # ACDC and exact, run over every edge
    autocircuit_exact_edges: int = 6  # sampled edges for auto-circuit's per-edge exact time
    autocircuit_acdc_tau: float = 1e-3
    autocircuit_timeout_s: float = 3600.0
    eapig: bool = True  # the EAP-IG reference peer (benchmarks/eapig/), when its venv exists
    eapig_venv: Path | None = None  # default: $CIRCUITFIND_EAPIG_VENV or .venv-eapig
    eapig_shape: Shape = GPT2_SMALL


FULL = SpeedConfig()
QUICK = SpeedConfig(
    repeat=1,
    max_full_s=60.0,
    exact_receivers_per_layer=1,
    exact_sample_senders=4,
    scaling_shape=Shape(4, 4, 256),
    scaling_prompts=(8, 16, 32, 64),
    scaling_shapes=(Shape(2, 4, 256), Shape(4, 4, 256), Shape(4, 8, 512), Shape(6, 8, 512)),
    zoo=("induction-2l",),
    build_venv=False,
    autocircuit_shape=Shape(4, 4, 256),
    autocircuit_exact_edges=3,
    eapig_shape=Shape(4, 4, 256),
)


# ---------------------------------------------------------------------------- models, tasks
def random_gpt2(shape: Shape, seed: int, device: str = "cpu") -> Any:
    """A GPT-2-family HF model of ``shape`` with random weights, eager attention, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=shape.layers,
        n_head=shape.heads,
        n_embd=shape.d_model,
    )
    hf = GPT2LMHeadModel(cfg).eval().to(device)
    hf.config._attn_implementation = "eager"
    return hf


def random_task(vocab: int, n: int, tokens: int, seed: int) -> Any:
    """n random clean/corrupted prompt pairs of ``tokens`` tokens, logit-difference metric."""
    from circuitfind.tasks import Task

    g = torch.Generator().manual_seed(seed)
    return Task.from_tokens(
        torch.randint(0, vocab, (n, tokens), generator=g),
        torch.randint(0, vocab, (n, tokens), generator=g),
        answer=torch.randint(0, vocab, (n,), generator=g),
        wrong=torch.randint(0, vocab, (n,), generator=g),
        name="random",
    )


@dataclass
class Case:
    """One model + task to time: the HF model (the baseline) and circuitfind's view of it."""

    name: str
    hf: Any
    model: Any
    graph: Any
    task: Any

    @property
    def batch_tokens(self) -> tuple[int, int]:
        return tuple(self.task.clean.shape)  # type: ignore[return-value]


def make_case(name: str, hf: Any, task: Any) -> Case:
    """The case of HF model ``hf`` (the baseline) and ``task``, with circuitfind's view of it."""
    import circuitfind as cf

    model = cf.load(hf)
    return Case(name, hf, model, cf.Graph.from_model(model), task)


def random_case(shape: Shape, n: int, tokens: int, seed: int) -> Case:
    hf = random_gpt2(shape, seed)
    return make_case(
        f"random GPT-2 {shape.label}", hf, random_task(hf.config.vocab_size, n, tokens, seed)
    )


def zoo_case(name: str, n: int, seed: int) -> Case:
    import circuitfind as cf
    from circuitfind import zoo

    card = zoo.card(name)
    model = cf.load(f"zoo:{name}")
    task_name = card.get("task", name if name != "induction-2l" else "induction")
    task = cf.get_task(task_name, model, n=n, seed=seed)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(zoo.resolve(name), attn_implementation="eager")
    hf.eval()
    return Case(f"zoo:{name}", hf, model, cf.Graph.from_model(model), task)
