"""The canonical model: one decomposed forward for every supported family.

The residual stream entering any component is the sum of the outputs of everything before it:
the embedding node ``input``, each attention head's ``z_h @ W_O[h]`` (node ``a{L}.h{H}``), each
MLP's output (node ``m{L}``), plus constant biases that belong to no single node. The only such
bias here is the attention output bias ``b_O`` of each layer: it is added to the residual stream
once per layer (``Model.forward`` adds it in ``attn_out``; the patching engine adds it through
``ForwardCache.constant`` / ``Model.attn_bias``), never to a head's output, so head edges carry
exactly ``z_h @ W_O[h]``. MLP biases belong to their MLP node.

Every receiver applies its own normalisation to its own input: a head's query, key and value
inputs (``x_q``, ``x_k``, ``x_v`` of ``Model.attention``) may each be a shared stream
``[batch, pos, d_model]`` or one stream per query head ``[batch, pos, head, d_model]``, so the
patching engine can give any one receiver a different input without touching the others. With
grouped-query attention a per-head key/value input is projected with that head's key/value group
weights, so nothing leaks across the group. Layers can be run one at a time (``Model.attention``,
``Model.mlp``, ``Model.unembed``), so a run can start from any layer with everything upstream
cached.

Weights are views of the Hugging Face parameters (no second copy); the family adapters in
``circuitfind.families`` say where each part lives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitfind.errors import InputError

__all__ = [
    "ForwardCache",
    "LayerWeights",
    "Model",
    "ModelConfig",
    "ModelWeights",
    "RunContext",
    "cache_bytes",
]

logger = logging.getLogger(__name__)

Hook = Callable[[Tensor], Tensor]


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

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["attn_scale"] = list(self.attn_scale)
        out["window"] = list(self.window)
        return out


@dataclass
class LayerWeights:
    """One layer's weights, canonical shapes (views of the HF parameters where possible)."""

    ln1_w: Tensor  # [d_model]
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
    ln2_w: Tensor
    ln2_b: Tensor | None
    ln2_eps: float
    W_in: Tensor  # [d_model, d_mlp]
    b_in: Tensor | None  # [d_mlp]
    W_out: Tensor  # [d_mlp, d_model]
    b_out: Tensor | None  # [d_model]
    act: Callable[[Tensor], Tensor]
    W_gate: Tensor | None = None  # [d_model, d_mlp] (gated MLPs: act(x W_gate) * (x W_in))
    b_gate: Tensor | None = None


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
    rotary: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None  # (x, pos) -> cos, sin


@dataclass
class RunContext:
    """What every layer of one run shares: positions, masks, rotary angles.

    Batch-major; ``tile(k)`` repeats it for k patched variants stacked along the batch axis
    (variant-major: variant 0's batch, then variant 1's, ...).
    """

    positions: Tensor  # [batch, pos] position ids (left padding shifts them)
    masks: dict[int | None, Tensor]  # window -> bool [batch or 1, 1, q, k], True = attend
    cos: Tensor | None  # [batch, pos, rotary_dim]
    sin: Tensor | None
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
            cos=rep(self.cos),
            sin=rep(self.sin),
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
            cos=sel(self.cos),
            sin=sel(self.sin),
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


def _rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return w * x32.to(dtype)


def pick_positions(x: Tensor, index: Tensor) -> Tensor:
    """x[:, index] for a shared [n] index, or row by row for a [batch, n] one (x: [batch,
    pos, ...]; a batch-1 x is broadcast to the index's rows)."""
    if index.dim() == 1:
        return x[:, index]
    if x.shape[0] != index.shape[0]:
        x = x.expand(index.shape[0], *x.shape[1:])
    rows = torch.arange(index.shape[0], device=index.device)[:, None]
    return x[rows, index]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Model:
    """A transformer language model as a sum of nodes (see the module docstring).

    ``model(tokens, attention_mask=None)`` returns logits [batch, pos, vocab] equal to the
    Hugging Face model's. ``model.hf_model`` is the source model, whose parameters the
    canonical weights view.
    """

    def __init__(
        self, hf_model: Any, cfg: ModelConfig, weights: ModelWeights, tokenizer: Any = None
    ) -> None:
        self.hf_model = hf_model
        self.cfg = cfg
        self.w = weights
        self.tokenizer = tokenizer
        self._kv_index = torch.arange(cfg.n_heads) // cfg.group_size
        self._installed: list[dict[str, Hook]] = []  # persistent hooks (``Model.hooked``)

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self.w.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.w.W_E.dtype

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"Model({c.name or c.family}: {c.n_layers} layers, {c.n_heads} heads"
            f"{f' ({c.n_kv_heads} kv)' if c.n_kv_heads != c.n_heads else ''}, d_model {c.d_model})"
        )

    def to_tokens(self, text: str | list[str], *, padding_side: str = "right") -> Tensor:
        """Tokenize text with the model's tokenizer (no special tokens added)."""
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; pass token ids instead of text")
        texts = [text] if isinstance(text, str) else list(text)
        self.tokenizer.padding_side = padding_side
        out = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return out["input_ids"].to(self.device)

    def check_tokens(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Validate a token batch and return it as a 2-D LongTensor on the model's device."""
        if not isinstance(tokens, Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2:
            raise InputError(f"tokens must be [batch, pos]; got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise InputError(f"tokens must be integer ids; got dtype {tokens.dtype}")
        if tokens.numel() == 0:
            raise InputError("tokens is empty")
        bad = (tokens < 0) | (tokens >= self.cfg.d_vocab)
        if attention_mask is not None:
            bad = bad & attention_mask.to(tokens.device).bool()
        if bad.any():
            b, p = (int(i) for i in bad.nonzero()[0])
            raise InputError(
                f"token id {int(tokens[b, p])} at batch {b}, position {p} is outside the "
                f"vocabulary [0, {self.cfg.d_vocab}); check the tokenizer matches the model"
            )
        if self.cfg.positional == "learned" and self.cfg.n_ctx and tokens.shape[1] > self.cfg.n_ctx:
            raise InputError(
                f"sequence of {tokens.shape[1]} tokens is longer than the model's context "
                f"({self.cfg.n_ctx}); shorten the prompts"
            )
        return tokens.to(self.device).long()

    # ----------------------------------------------------------------- run context
    def context(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> RunContext:
        """Positions, attention masks and rotary angles for a batch of tokens.

        With an attention mask, position ids count real tokens only (as in generation), so a
        left-padded prompt gets the same positions as the unpadded one. ``position_ids``
        ([batch, pos] or [pos]) overrides that, as in Hugging Face: HF's own forward without
        them numbers every position 0..T-1, padding included, which differs from the unpadded
        prompt for left-padded learned-position models (GPT-2, GPT-Neo).
        """
        batch, seq = tokens.shape
        device = tokens.device
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
            if attention_mask.shape != tokens.shape:
                raise InputError(
                    f"attention_mask shape {tuple(attention_mask.shape)} differs from tokens "
                    f"shape {tuple(tokens.shape)}"
                )
            if bool(attention_mask.all()):
                attention_mask = None
        if position_ids is not None:
            positions = torch.as_tensor(position_ids, device=device).long()
            if positions.ndim == 1:
                positions = positions.unsqueeze(0)
            if positions.shape[-1] != seq or positions.shape[0] not in (1, batch):
                raise InputError(
                    f"position_ids shape {tuple(positions.shape)} does not fit tokens shape "
                    f"{tuple(tokens.shape)}; give [batch, pos] or [pos]"
                )
            positions = positions.expand(batch, seq)
            learned = self.cfg.positional == "learned"
            if learned and self.cfg.n_ctx and int(positions.max()) >= self.cfg.n_ctx:
                raise InputError(
                    f"position id {int(positions.max())} is outside the model's context "
                    f"({self.cfg.n_ctx})"
                )
        elif attention_mask is None:
            positions = torch.arange(seq, device=device).unsqueeze(0).expand(batch, seq)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

        q_idx = torch.arange(seq, device=device)[:, None]
        k_idx = torch.arange(seq, device=device)[None, :]
        masks: dict[int | None, Tensor] = {}
        for window in set(self.cfg.window):
            allowed = k_idx <= q_idx
            if window is not None:
                allowed = allowed & (q_idx - k_idx < window)
            allowed = allowed[None, None]  # [1, 1, q, k]
            if attention_mask is not None:
                allowed = allowed & attention_mask.bool()[:, None, None, :]
            masks[window] = allowed

        cos = sin = None
        if self.w.rotary is not None:
            dummy = torch.empty(0, dtype=self.dtype, device=device)
            cos, sin = self.w.rotary(dummy, positions)
        return RunContext(positions, masks, cos, sin, attention_mask)

    # ----------------------------------------------------------------- components
    def embed(self, tokens: Tensor, ctx: RunContext) -> Tensor:
        """The ``input`` node: token (+ learned position) embeddings. [batch, pos, d_model]"""
        x = self.w.W_E[tokens]
        if self.w.W_pos is not None:
            x = x + self.w.W_pos[ctx.positions]
        return x

    def norm(self, x: Tensor, w: Tensor, b: Tensor | None, eps: float) -> Tensor:
        if self.cfg.norm == "rmsnorm":
            return _rms_norm(x, w, eps)
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def _project(
        self, x: Tensor, W: Tensor, b: Tensor | None, per_query_head: bool, kv: bool
    ) -> Tensor:
        """Project a (normalised) stream to per-head vectors. Returns [batch, pos, head, d_head].

        ``x`` is [batch, pos, d_model] (shared) or [batch, pos, head, d_model] (one stream per
        query head). Key/value weights are per kv head; with a per-head input each query head
        uses its own group's weights, so nothing leaks across the group.
        """
        if x.dim() == 3:
            out = torch.einsum("bpd,hde->bphe", x, W)
            if b is not None:
                out = out + b
            if kv and per_query_head and self.cfg.group_size > 1:
                out = out.repeat_interleave(self.cfg.group_size, dim=2)
            return out
        if kv and self.cfg.group_size > 1:
            idx = self._kv_index.to(W.device)
            W = W[idx]
            b = b[idx] if b is not None else None
        out = torch.einsum("bphd,hde->bphe", x, W)
        if b is not None:
            out = out + b
        return out

    def _rotate(self, x: Tensor, ctx: RunContext, q_index: Tensor | None = None) -> Tensor:
        """Apply rotary embeddings to [batch, pos, head, d_head] (first rotary_dim dims)."""
        if ctx.cos is None or ctx.sin is None:
            return x
        cos, sin = ctx.cos, ctx.sin
        if q_index is not None:
            cos, sin = pick_positions(cos, q_index), pick_positions(sin, q_index)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        rot = cos.shape[-1]
        if rot == x.shape[-1]:
            return x * cos + _rotate_half(x) * sin
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)

    def attention(
        self,
        layer: int,
        x_q: Tensor,
        x_k: Tensor,
        x_v: Tensor,
        ctx: RunContext,
        *,
        q_index: Tensor | None = None,
        return_pattern: bool = False,
        heads: list[int] | None = None,
        probes: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Layer ``layer``'s attention from residual-stream inputs (normalised here).

        Args:
            x_q, x_k, x_v: the query/key/value receivers' inputs, each [batch, pos, d_model]
                or [batch, pos, head, d_model] (one per query head).
            ctx: the run context (``Model.context``).
            q_index: only compute these query positions (keys/values use every position):
                [n_q] shared by every row, or [batch, n_q] per row (e.g. each prompt's
                readout).
            return_pattern: also return the attention probabilities [batch, head, q, k].
            heads: only compute these query heads (per-head inputs then have len(heads) heads);
                the outputs' head axis follows this list.
            probes: tensors [batch, pos, head, d_head] added to the projected queries, keys
                and values of each query head (keys/values already expanded to query heads,
                before rotary). Their gradients are the gradients w.r.t. each head's own
                projections, which EAP maps back to the receivers' inputs.

        Returns:
            z [batch, q, head, d_head] (before W_O) and the pattern or None.
        """
        lw, cfg = self.w.layers[layer], self.cfg
        per_head = x_q.dim() == 4 or x_k.dim() == 4 or x_v.dim() == 4

        normed: dict[int, Tensor] = {}

        def ln(x: Tensor) -> Tensor:
            key = id(x)
            if key not in normed:
                normed[key] = self.norm(x, lw.ln1_w, lw.ln1_b, lw.ln1_eps)
            return normed[key]

        if q_index is not None:
            x_q = pick_positions(x_q, q_index)
        if heads is None:
            q = self._project(ln(x_q), lw.W_Q, lw.b_Q, per_head, kv=False)
            k = self._project(ln(x_k), lw.W_K, lw.b_K, per_head, kv=True)
            v = self._project(ln(x_v), lw.W_V, lw.b_V, per_head, kv=True)
        else:  # a subset of query heads, each with its own key/value group's weights
            idx = torch.as_tensor(heads, device=lw.W_Q.device)
            kv_idx = self._kv_index.to(idx.device)[idx]

            def pick(b: Tensor | None, i: Tensor) -> Tensor | None:
                return None if b is None else b[i]

            q = self._project(ln(x_q), lw.W_Q[idx], pick(lw.b_Q, idx), True, kv=False)
            k = self._project(ln(x_k), lw.W_K[kv_idx], pick(lw.b_K, kv_idx), True, kv=False)
            v = self._project(ln(x_v), lw.W_V[kv_idx], pick(lw.b_V, kv_idx), True, kv=False)
        if probes is not None:
            if k.shape[2] != q.shape[2]:
                k = k.repeat_interleave(cfg.group_size, dim=2)
                v = v.repeat_interleave(cfg.group_size, dim=2)
            q, k, v = q + probes[0], k + probes[1], v + probes[2]
        q = self._rotate(q, ctx, q_index)
        k = self._rotate(k, ctx)
        if k.shape[2] != q.shape[2]:  # shared input, grouped kv heads: expand to query heads
            k = k.repeat_interleave(cfg.group_size, dim=2)
            v = v.repeat_interleave(cfg.group_size, dim=2)

        if cfg.scores_fp32:
            q, k = q.float(), k.float()
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * cfg.attn_scale[layer]
        mask = ctx.masks[cfg.window[layer]]
        if q_index is not None:
            if q_index.dim() == 1:
                mask = mask[:, :, q_index]
            else:  # [b, 1, q, k] -> [b, 1, n_q, k], row by row
                full = mask.expand(q_index.shape[0], *mask.shape[1:])
                mask = pick_positions(full[:, 0], q_index).unsqueeze(1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        return z, (pattern if return_pattern else None)

    def head_results(self, layer: int, z: Tensor) -> Tensor:
        """Each head's output z_h @ W_O[h] into the stream: [batch, pos, head, d_model]."""
        return torch.einsum("bphe,hem->bphm", z, self.w.layers[layer].W_O)

    def attn_out(self, layer: int, z: Tensor) -> Tensor:
        """The summed attention output including the constant bias b_O: [batch, pos, d_model]."""
        lw = self.w.layers[layer]
        out = torch.einsum("bphe,hem->bpm", z, lw.W_O)
        return out + lw.b_O if lw.b_O is not None else out

    def attn_bias(self, layer: int) -> Tensor | None:
        """Layer ``layer``'s constant attention output bias b_O [d_model] (None if absent)."""
        return self.w.layers[layer].b_O

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        """MLP ``m{layer}`` from its residual-stream input (normalised here); output incl. bias."""
        lw = self.w.layers[layer]
        h = self.norm(x, lw.ln2_w, lw.ln2_b, lw.ln2_eps)
        pre = h @ lw.W_in
        if lw.b_in is not None:
            pre = pre + lw.b_in
        if lw.W_gate is not None:
            gate = h @ lw.W_gate
            if lw.b_gate is not None:
                gate = gate + lw.b_gate
            act = lw.act(gate) * pre
        else:
            act = lw.act(pre)
        out = act @ lw.W_out
        return out + lw.b_out if lw.b_out is not None else out

    def final_norm(self, x: Tensor) -> Tensor:
        return self.norm(x, self.w.lnf_w, self.w.lnf_b, self.w.lnf_eps)

    def unembed(self, x: Tensor) -> Tensor:
        """Logits from the final residual stream (final norm applied here)."""
        logits = self.final_norm(x) @ self.w.W_U
        return logits + self.w.b_U if self.w.b_U is not None else logits

    # ----------------------------------------------------------------- whole runs
    def forward(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        hooks: dict[str, Hook] | None = None,
    ) -> Tensor:
        """Logits [batch, pos, vocab], equal to the Hugging Face model's.

        ``hooks`` maps hook points to functions ``fn(x) -> x`` that may replace the tensor there:
        ``embed`` (the input node), ``resid_pre.{L}``, ``resid_mid.{L}`` (sequential families),
        ``attn_out.{L}`` (summed attention output incl. b_O), ``mlp_out.{L}``, ``resid_final``
        (before the final norm). All are [batch, pos, d_model]. Used by steering, directional
        ablation and SAE splicing. ``position_ids``: see :meth:`context`.
        """
        if hooks:
            unknown = set(hooks) - set(self.hook_points())
            if unknown:
                raise InputError(
                    f"unknown hook point(s) {sorted(unknown)}; valid: embed, resid_pre.L, "
                    "resid_mid.L, attn_out.L, mlp_out.L, resid_final"
                )
        logits, _ = self._run(
            tokens, attention_mask, cache=None, hooks=hooks or {}, position_ids=position_ids
        )
        return logits

    @contextmanager
    def hooked(self, hooks: dict[str, Hook]) -> Iterator[Model]:
        """Apply ``hooks`` to every run of the model inside the block (forward, caches).

        Hooks given to a single call run after these; nested blocks compose in order. Leaving
        the block always removes them, also on errors.
        """
        unknown = set(hooks) - set(self.hook_points())
        if unknown:
            raise InputError(
                f"unknown hook point(s) {sorted(unknown)}; valid: {self.hook_points()}"
            )
        self._installed.append(dict(hooks))  # popped in LIFO order: blocks nest
        try:
            yield self
        finally:
            self._installed.pop()

    def _merged_hooks(self, hooks: dict[str, Hook] | None) -> dict[str, Hook]:
        layers = [*self._installed, hooks or {}]
        merged: dict[str, list[Hook]] = {}
        for layer in layers:
            for point, fn in layer.items():
                merged.setdefault(point, []).append(fn)

        def chain(fns: list[Hook]) -> Hook:
            def run(x: Tensor) -> Tensor:
                for fn in fns:
                    x = fn(x)
                return x

            return run

        return {p: fns[0] if len(fns) == 1 else chain(fns) for p, fns in merged.items()}

    def hook_points(self) -> list[str]:
        """Names accepted by ``forward(..., hooks=...)``."""
        points = ["embed"]
        for layer in range(self.cfg.n_layers):
            points += [f"resid_pre.{layer}", f"attn_out.{layer}", f"mlp_out.{layer}"]
            if not self.cfg.parallel_attn_mlp:
                points.append(f"resid_mid.{layer}")
        return [*points, "resid_final"]

    __call__ = forward

    def run_with_cache(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        *,
        patterns: bool = False,
        z: bool = False,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, ForwardCache]:
        """Logits and a ``ForwardCache`` of every node output and receiver input.

        The cache takes ``cache_bytes(model.cfg, batch, pos, patterns=...)`` bytes; the size is
        logged before the run.
        """
        tokens = self.check_tokens(tokens, attention_mask)
        size = cache_bytes(
            self.cfg, *tokens.shape, dtype_bytes=self.w.W_E.element_size(), patterns=patterns
        )
        logger.info("cache for %s tokens: %.1f MiB", tuple(tokens.shape), size / 2**20)
        cache = ForwardCache(self.cfg, input=torch.empty(0))
        logits, _ = self._run(
            tokens, attention_mask, cache=cache, patterns=patterns, z=z, position_ids=position_ids
        )
        return logits, cache

    def cache(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        *,
        patterns: bool = False,
        z: bool = False,
        position_ids: Tensor | None = None,
    ) -> ForwardCache:
        """Like ``run_with_cache`` without the unembedding (cheaper when logits are not needed:
        the unembedding is a large share of a small model's forward)."""
        tokens = self.check_tokens(tokens, attention_mask)
        cache = ForwardCache(self.cfg, input=torch.empty(0))
        self._run(
            tokens,
            attention_mask,
            cache=cache,
            patterns=patterns,
            z=z,
            unembed=False,
            position_ids=position_ids,
        )
        return cache

    def _run(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None,
        cache: ForwardCache | None,
        patterns: bool = False,
        z: bool = False,
        hooks: dict[str, Hook] | None = None,
        unembed: bool = True,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, ForwardCache | None]:
        hooks = self._merged_hooks(hooks) if self._installed else (hooks or {})

        def hook(point: str, x: Tensor) -> Tensor:
            fn = hooks.get(point)
            return x if fn is None else fn(x)

        tokens = self.check_tokens(tokens, attention_mask)
        ctx = self.context(tokens, attention_mask, position_ids)
        resid = hook("embed", self.embed(tokens, ctx))
        if cache is not None:
            cache.input = resid
        for layer in range(self.cfg.n_layers):
            resid = hook(f"resid_pre.{layer}", resid)
            zl, pattern = self.attention(
                layer, resid, resid, resid, ctx, return_pattern=cache is not None and patterns
            )
            if cache is not None:
                heads = self.head_results(layer, zl)
                bias = self.attn_bias(layer)
                attn = heads.sum(2)
                attn = attn + bias if bias is not None else attn
                cache.resid_pre.append(resid)
                cache.heads.append(heads)
                cache.attn_bias.append(bias)
                if z:
                    cache.z.append(zl)
                if pattern is not None:
                    cache.patterns.append(pattern)
            else:
                attn = self.attn_out(layer, zl)
            attn = hook(f"attn_out.{layer}", attn)
            if self.cfg.parallel_attn_mlp:
                mlp = hook(f"mlp_out.{layer}", self.mlp(layer, resid))
                resid = mlp + attn + resid
            else:
                resid = hook(f"resid_mid.{layer}", resid + attn)
                if cache is not None:
                    cache.resid_mid.append(resid)
                mlp = hook(f"mlp_out.{layer}", self.mlp(layer, resid))
                resid = resid + mlp
            if cache is not None:
                cache.mlps.append(mlp)
        resid = hook("resid_final", resid)
        if cache is not None:
            cache.resid_final = resid
        if not unembed:
            return resid, cache
        return self.unembed(resid), cache
