"""The records the canonical model is made of: its config, its weights and one run's state.

``ModelConfig`` (shape and architectural choices, family-independent), ``LayerWeights`` /
``ModelWeights`` (canonical-shape views of the Hugging Face parameters, filled in by the family
adapters), ``RunContext`` (positions, masks and rotary angles one run shares) and
``ForwardCache`` (node outputs and receiver inputs of one run). ``circuitfind.model`` holds the
forward that uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "ForwardCache",
    "LayerWeights",
    "ModelConfig",
    "ModelWeights",
    "RunContext",
    "cache_bytes",
]


@dataclass(frozen=True)
class ModelConfig:
    """The shape and the architectural choices of a model, family-independent."""

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int | None
    parallel_attn_mlp: bool
    norm: Literal["layernorm", "rmsnorm"]
    gated_mlp: bool
    positional: Literal["learned", "rotary"]
    attn_scale: tuple[float, ...]  # per layer: the factor applied to q.k
    window: tuple[int | None, ...]  # per layer: sliding/local window (key kept iff q - k < window)
    scores_fp32: bool = False  # attention scores computed in float32 (GPT-Neo, upcast GPT-2)
    tied_embeddings: bool = False
    name: str = ""
    # Family-specific structure (defaults: a plain pre-norm transformer).
    norm_offset: float = 0.0  # norms scale by (offset + weight): Gemma's RMSNorm has 1
    embed_scale: float | None = None  # input embeddings times this (Gemma: sqrt(d_model))
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma-2)
    final_softcap: float | None = None  # logits -> cap * tanh(logits / cap) (Gemma-2)
    qk_norm: Literal["head", "full"] | None = None  # RMSNorm of q and k: per head / whole proj.
    post_norms: bool = False  # norms after attention and MLP, before the residual add
    rotary_interleaved: bool = False  # rotary on interleaved pairs (GPT-J's rotate_every_two)
    rotary_kind: tuple[str | None, ...] = ()  # per layer: which rotary table (Gemma-3)

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["attn_scale"] = list(self.attn_scale)
        out["window"] = list(self.window)
        out["rotary_kind"] = list(self.rotary_kind)
        return out

    def layer_rotary(self, layer: int) -> str | None:
        """The rotary table layer ``layer`` uses (None: the model's only one)."""
        return self.rotary_kind[layer] if self.rotary_kind else None


@dataclass
class LayerWeights:
    """One layer's weights, canonical shapes (views of the HF parameters where possible)."""

    ln1_w: Tensor | None  # [d_model] (None: no norm before attention, OLMo-2)
    ln1_b: Tensor | None
    ln1_eps: float
    W_Q: Tensor  # [head, d_model, d_head]
    W_K: Tensor  # [kv_head, d_model, d_head]
    W_V: Tensor  # [kv_head, d_model, d_head]
    W_O: Tensor  # [head, d_head, d_model]
    b_Q: Tensor | None  # [head, d_head]
    b_K: Tensor | None  # [kv_head, d_head]
    b_V: Tensor | None  # [kv_head, d_head]
    b_O: Tensor | None  # [d_model]  (constant: belongs to no head, see module docstring)
    ln2_w: Tensor | None  # (None: no norm before the MLP, OLMo-2)
    ln2_b: Tensor | None
    ln2_eps: float
    W_in: Tensor  # [d_model, d_mlp]
    b_in: Tensor | None  # [d_mlp]
    W_out: Tensor  # [d_mlp, d_model]
    b_out: Tensor | None  # [d_model]
    act: Callable[[Tensor], Tensor]
    W_gate: Tensor | None = None  # [d_model, d_mlp] (gated MLPs: act(x W_gate) * (x W_in))
    b_gate: Tensor | None = None
    q_norm_w: Tensor | None = None  # [d_head] ("head") or [head * d_head] ("full")
    k_norm_w: Tensor | None = None  # [d_head] or [kv_head * d_head]
    qk_norm_eps: float = 1e-6
    post_attn_w: Tensor | None = None  # [d_model]: norm of the attention output (post-norms)
    post_attn_eps: float = 1e-6
    post_mlp_w: Tensor | None = None  # [d_model]: norm of the MLP output
    post_mlp_eps: float = 1e-6


@dataclass
class ModelWeights:
    W_E: Tensor  # [vocab, d_model]
    W_pos: Tensor | None  # [n_ctx, d_model] (learned positions)
    layers: list[LayerWeights]
    lnf_w: Tensor
    lnf_b: Tensor | None
    lnf_eps: float
    W_U: Tensor  # [d_model, vocab]
    b_U: Tensor | None  # [vocab]
    # (x, pos) -> cos, sin [batch, pos, rotary_dim]; (x, pos, kind) with ModelConfig.rotary_kind
    rotary: Callable[..., tuple[Tensor, Tensor]] | None = None


@dataclass
class RunContext:
    """What every layer of one run shares: positions, masks, rotary angles.

    Batch-major; ``tile(k)`` repeats it for k patched variants stacked along the batch axis
    (variant-major: variant 0's batch, then variant 1's, ...).
    """

    positions: Tensor  # [batch, pos] position ids (left padding shifts them)
    masks: dict[int | None, Tensor]  # window -> bool [batch or 1, 1, q, k], True = attend
    cos: dict[str | None, Tensor]  # rotary kind -> [batch, pos, rotary_dim] (empty: none)
    sin: dict[str | None, Tensor]
    attention_mask: Tensor | None  # [batch, pos] 1 = real token

    @property
    def batch(self) -> int:
        return self.positions.shape[0]

    def tile(self, k: int) -> RunContext:
        def rep(t: Tensor | None) -> Tensor | None:
            if t is None or t.shape[0] == 1:
                return t
            return t.repeat(k, *([1] * (t.dim() - 1)))

        return RunContext(
            positions=rep(self.positions),  # type: ignore[arg-type]
            masks={w: rep(m) for w, m in self.masks.items()},  # type: ignore[misc]
            cos={k: rep(v) for k, v in self.cos.items()},  # type: ignore[misc]
            sin={k: rep(v) for k, v in self.sin.items()},  # type: ignore[misc]
            attention_mask=rep(self.attention_mask),
        )

    def select(self, index: Tensor) -> RunContext:
        """The context of a subset of the batch (``index`` into the batch axis)."""

        def sel(t: Tensor | None) -> Tensor | None:
            if t is None or t.shape[0] == 1:
                return t
            return t[index]

        return RunContext(
            positions=sel(self.positions),  # type: ignore[arg-type]
            masks={w: sel(m) for w, m in self.masks.items()},  # type: ignore[misc]
            cos={k: sel(v) for k, v in self.cos.items()},  # type: ignore[misc]
            sin={k: sel(v) for k, v in self.sin.items()},  # type: ignore[misc]
            attention_mask=sel(self.attention_mask),
        )


def cache_bytes(
    cfg: ModelConfig, batch: int, seq: int, *, dtype_bytes: int = 4, patterns: bool = False
) -> int:
    """Bytes a full ``ForwardCache`` takes: node outputs, residual streams, optional patterns."""
    per_token = cfg.d_model * (1 + cfg.n_layers * (cfg.n_heads + 1))  # node outputs
    per_token += cfg.d_model * (2 * cfg.n_layers + 1)  # resid_pre, resid_mid, resid_final
    per_token += cfg.n_layers * cfg.n_heads * cfg.d_head  # z
    total = per_token * batch * seq
    if patterns:
        total += cfg.n_layers * cfg.n_heads * batch * seq * seq
    return total * dtype_bytes


@dataclass
class ForwardCache:
    """Node outputs and receiver inputs of one run.

    Node outputs: ``input`` [batch, pos, d_model], ``heads[L]`` [batch, pos, head, d_model]
    (z_h @ W_O[h], no bias), ``mlps[L]`` [batch, pos, d_model]. Receiver inputs (residual
    streams): ``resid_pre[L]`` feeds layer L's q/k/v (and, in parallel families, its MLP),
    ``resid_mid[L]`` feeds MLP L in sequential families, ``resid_final`` feeds the logits.
    ``z[L]`` [batch, pos, head, d_head] and ``patterns[L]`` [batch, head, q, k] when asked for.

    With post-norms (``cfg.post_norms``: Gemma-2/3, OLMo-2) a layer writes
    ``attn_post[L] = postnorm(attn_pre[L])`` into the stream, ``attn_pre[L]`` being the sum of
    its heads plus b_O: the stream is then the input plus, per layer, ``attn_post`` and the MLP
    (whose node output includes its own post-norm), not the plain sum of the head outputs
    (``attn_bias`` holds None there: b_O sits inside the norm).
    """

    cfg: ModelConfig
    input: Tensor
    heads: list[Tensor] = field(default_factory=list)
    mlps: list[Tensor] = field(default_factory=list)
    attn_bias: list[Tensor | None] = field(default_factory=list)
    resid_pre: list[Tensor] = field(default_factory=list)
    resid_mid: list[Tensor] = field(default_factory=list)
    resid_final: Tensor | None = None
    z: list[Tensor] = field(default_factory=list)
    patterns: list[Tensor] = field(default_factory=list)
    attn_pre: list[Tensor] = field(default_factory=list)  # post-norm families only
    attn_post: list[Tensor] = field(default_factory=list)

    def __getitem__(self, name: str) -> Tensor:
        """A node's output by name: ``input``, ``a{L}.h{H}`` or ``m{L}`` (any common spelling)."""
        from circuitfind.names import parse_node

        canonical = parse_node(name)
        if canonical == "input":
            return self.input
        if canonical.startswith("m"):
            return self.mlps[int(canonical[1:])]
        if canonical == "logits":
            raise KeyError("'logits' is a receiver; its input is cache.resid_final")
        layer, head = canonical[1:].split(".h")
        return self.heads[int(layer)][:, :, int(head)]

    def node_outputs(self) -> Tensor:
        """All node outputs stacked in graph sender order: [sender, batch, pos, d_model]."""
        parts = [self.input.unsqueeze(0)]
        for layer in range(self.cfg.n_layers):
            parts.append(self.heads[layer].permute(2, 0, 1, 3))
            parts.append(self.mlps[layer].unsqueeze(0))
        return torch.cat(parts, dim=0)

    def receiver_input(self, layer: int, kind: Literal["attn", "mlp"]) -> Tensor:
        """The residual stream a receiver of layer ``layer`` reads in this (unpatched) run."""
        if kind == "attn" or self.cfg.parallel_attn_mlp:
            return self.resid_pre[layer]
        return self.resid_mid[layer]

    def constant(self, upto_layer: int, *, include_layer: bool = False) -> Tensor | float:
        """Sum of the constant attention-output biases of layers < upto_layer (<= if include)."""
        stop = upto_layer + 1 if include_layer else upto_layer
        total: Tensor | float = 0.0
        for b in self.attn_bias[:stop]:
            if b is not None:
                total = total + b
        return total
