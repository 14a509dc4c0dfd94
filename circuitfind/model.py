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
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitfind.context import run_context
from circuitfind.errors import InputError
from circuitfind.ops import pick_positions, rms_norm, rotate_every_two, rotate_half, softcap
from circuitfind.records import (
    ForwardCache,
    LayerWeights,
    ModelConfig,
    ModelWeights,
    RunContext,
    cache_bytes,
)

__all__ = [
    "ForwardCache",
    "LayerWeights",
    "Model",
    "ModelConfig",
    "ModelWeights",
    "RunContext",
    "cache_bytes",
    "pick_positions",
]

logger = logging.getLogger(__name__)

Hook = Callable[[Tensor], Tensor]


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
        return run_context(self.cfg, self.w, self.dtype, tokens, attention_mask, position_ids)

    # ----------------------------------------------------------------- components
    def embed(self, tokens: Tensor, ctx: RunContext) -> Tensor:
        """The ``input`` node: token (+ learned position) embeddings. [batch, pos, d_model]"""
        x = self.w.W_E[tokens]
        if self.cfg.embed_scale is not None:  # Gemma: sqrt(d_model), rounded to the dtype as HF
            x = x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype, device=x.device)
        if self.w.W_pos is not None:
            x = x + self.w.W_pos[ctx.positions]
        return x

    def norm(self, x: Tensor, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
        """The family's norm (``w`` None: no norm there, the identity)."""
        if w is None:
            return x
        if x.dim() == 4 and not x.is_contiguous() and x.permute(2, 0, 1, 3).is_contiguous():
            # per-head inputs laid out head-major (a masked run's weighted sums): normalise in
            # that layout rather than copying [b, p, h, d] into place first
            return self.norm(x.permute(2, 0, 1, 3), w, b, eps).permute(1, 2, 0, 3)
        if self.cfg.norm == "rmsnorm":
            return rms_norm(x, w, eps, self.cfg.norm_offset)
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def norm_(self, x: Tensor, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
        """``norm`` written over ``x`` itself, a few rows at a time: for large inputs that the
        caller no longer needs (a masked run's per-head inputs), where a fresh output of the
        same size costs a page fault per page. ``x`` must be contiguous in some order of its
        leading axes with the model axis last (else a plain ``norm``)."""
        if w is None:
            return x
        if 0 in x.stride():  # a broadcast view (other inputs may read the same memory)
            return self.norm(x, w, b, eps)
        flat = x
        if not x.is_contiguous() and x.dim() == 4:
            flat = x.permute(2, 0, 1, 3)
        if not flat.is_contiguous():
            return self.norm(x, w, b, eps)
        rows = flat.view(-1, x.shape[-1])
        for chunk in rows.split(max(1, (1 << 18) // x.shape[-1])):
            chunk.copy_(self.norm(chunk, w, b, eps))
        return x

    def norm_scale(self, w: Tensor | None) -> Tensor:
        """The per-dimension scale a norm with weight ``w`` applies (``offset + w``; ones for
        no norm), float32 [d_model]."""
        if w is None:
            return torch.ones(self.cfg.d_model, device=self.device)
        return w.float() + self.cfg.norm_offset

    def _qk_rms(self, layer: int, xn: Tensor, kind: Literal["q", "k"]) -> Tensor:
        """1 / RMS of the whole q (or k) projection of each input ("full" q/k norm, OLMo-2):
        [batch, pos, 1, 1] for a shared input, [batch, pos, head, 1] for per-head ones."""
        lw = self.w.layers[layer]
        W, b = (lw.W_Q, lw.b_Q) if kind == "q" else (lw.W_K, lw.b_K)
        if xn.dim() == 3:
            full = torch.einsum("bpd,hde->bphe", xn, W)
            if b is not None:
                full = full + b
            ms = full.float().pow(2).mean((-2, -1), keepdim=True)
        else:
            full = torch.einsum("bpsd,hde->bpshe", xn, W)
            if b is not None:
                full = full + b
            ms = full.float().pow(2).mean((-2, -1))[..., None]
        return torch.rsqrt(ms + lw.qk_norm_eps)

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

    def _rotate(
        self, x: Tensor, ctx: RunContext, layer: int, q_index: Tensor | None = None
    ) -> Tensor:
        """Apply rotary embeddings to [batch, pos, head, d_head] (first rotary_dim dims)."""
        if not ctx.cos:
            return x
        kind = self.cfg.layer_rotary(layer)
        cos, sin = ctx.cos[kind], ctx.sin[kind]
        if q_index is not None:
            cos, sin = pick_positions(cos, q_index), pick_positions(sin, q_index)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        turn = rotate_every_two if self.cfg.rotary_interleaved else rotate_half
        rot = cos.shape[-1]
        if rot == x.shape[-1]:
            return x * cos + turn(x) * sin
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        return torch.cat((x_rot * cos + turn(x_rot) * sin, x_pass), dim=-1)

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
        disposable: bool = False,
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
                before rotary; before a per-head q/k norm, after a whole-projection one).
                Their gradients are the gradients w.r.t. each head's own projections, which
                EAP maps back to the receivers' inputs.
            disposable: per-head inputs may be overwritten (normalised in place).

        Returns:
            z [batch, q, head, d_head] (before W_O) and the pattern or None.
        """
        lw, cfg = self.w.layers[layer], self.cfg
        per_head = x_q.dim() == 4 or x_k.dim() == 4 or x_v.dim() == 4

        normed: dict[int, Tensor] = {}

        def ln(x: Tensor) -> Tensor:
            key = id(x)
            if key not in normed:
                norm = self.norm_ if disposable and x.dim() == 4 else self.norm
                normed[key] = norm(x, lw.ln1_w, lw.ln1_b, lw.ln1_eps)
            return normed[key]

        if q_index is not None:
            x_q = pick_positions(x_q, q_index)
        kv_idx = self._kv_index.to(lw.W_Q.device)
        q_slots: Tensor | None = None  # which head each query slot is (None: all, in order)
        if heads is None:
            q = self._project(ln(x_q), lw.W_Q, lw.b_Q, per_head, kv=False)
            k = self._project(ln(x_k), lw.W_K, lw.b_K, per_head, kv=True)
            v = self._project(ln(x_v), lw.W_V, lw.b_V, per_head, kv=True)
        else:  # a subset of query heads, each with its own key/value group's weights
            idx = torch.as_tensor(heads, device=lw.W_Q.device)
            q_slots, kv_idx = idx, kv_idx[idx]

            def pick(b: Tensor | None, i: Tensor) -> Tensor | None:
                return None if b is None else b[i]

            q = self._project(ln(x_q), lw.W_Q[idx], pick(lw.b_Q, idx), True, kv=False)
            k = self._project(ln(x_k), lw.W_K[kv_idx], pick(lw.b_K, kv_idx), True, kv=False)
            v = self._project(ln(x_v), lw.W_V[kv_idx], pick(lw.b_V, kv_idx), True, kv=False)
        # the kv head of each key slot: all kv heads in order, or one per query slot
        k_slots = torch.arange(cfg.n_kv_heads, device=kv_idx.device)
        if heads is not None or k.shape[2] != cfg.n_kv_heads:
            k_slots = kv_idx
        if probes is not None:
            if k.shape[2] != q.shape[2]:
                k = k.repeat_interleave(cfg.group_size, dim=2)
                v = v.repeat_interleave(cfg.group_size, dim=2)
                k_slots = kv_idx
            if cfg.qk_norm != "full":
                q, k, v = q + probes[0], k + probes[1], v + probes[2]
        if cfg.qk_norm == "head":  # per head, over d_head (Qwen3, Gemma-3)
            q = self.norm(q, lw.q_norm_w, None, lw.qk_norm_eps)
            k = self.norm(k, lw.k_norm_w, None, lw.qk_norm_eps)
        elif cfg.qk_norm == "full":  # over the whole projection of each receiver's input
            assert lw.q_norm_w is not None and lw.k_norm_w is not None
            wq = lw.q_norm_w.view(cfg.n_heads, cfg.d_head)
            wq = wq if q_slots is None else wq[q_slots]
            wk = lw.k_norm_w.view(cfg.n_kv_heads, cfg.d_head)[k_slots]
            q = (q.float() * self._qk_rms(layer, ln(x_q), "q") * wq.float()).to(q.dtype)
            k = (k.float() * self._qk_rms(layer, ln(x_k), "k") * wk.float()).to(k.dtype)
            if probes is not None:
                q, k, v = q + probes[0], k + probes[1], v + probes[2]
        q = self._rotate(q, ctx, layer, q_index)
        k = self._rotate(k, ctx, layer)
        if k.shape[2] != q.shape[2]:  # shared input, grouped kv heads: expand to query heads
            k = k.repeat_interleave(cfg.group_size, dim=2)
            v = v.repeat_interleave(cfg.group_size, dim=2)

        if cfg.scores_fp32:
            q, k = q.float(), k.float()
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * cfg.attn_scale[layer]
        scores = softcap(scores, cfg.attn_softcap)
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

    def attn_pre(self, layer: int, z: Tensor) -> Tensor:
        """The heads' summed output plus b_O, before any post-norm: [batch, pos, d_model]."""
        lw = self.w.layers[layer]
        out = torch.einsum("bphe,hem->bpm", z, lw.W_O)
        return out + lw.b_O if lw.b_O is not None else out

    def post_attn(self, layer: int, pre: Tensor) -> Tensor:
        """What layer ``layer``'s attention writes into the stream, from ``attn_pre``: the
        post-norm of it (Gemma-2/3, OLMo-2), or itself."""
        lw = self.w.layers[layer]
        return self.norm(pre, lw.post_attn_w, None, lw.post_attn_eps)

    def attn_out(self, layer: int, z: Tensor) -> Tensor:
        """The attention output written into the stream (b_O and any post-norm included)."""
        return self.post_attn(layer, self.attn_pre(layer, z))

    def attn_bias(self, layer: int) -> Tensor | None:
        """Layer ``layer``'s constant attention output bias b_O [d_model], added to the stream
        (None if absent, and with post-norms, where b_O sits inside the norm)."""
        if self.cfg.post_norms:
            return None
        return self.w.layers[layer].b_O

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        """MLP ``m{layer}`` from its residual-stream input (normalised here); output incl. bias
        and any post-norm (the MLP node's output is what it writes into the stream)."""
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
        out = out + lw.b_out if lw.b_out is not None else out
        return self.norm(out, lw.post_mlp_w, None, lw.post_mlp_eps)

    def final_norm(self, x: Tensor) -> Tensor:
        return self.norm(x, self.w.lnf_w, self.w.lnf_b, self.w.lnf_eps)

    def unembed(self, x: Tensor) -> Tensor:
        """Logits from the final residual stream (final norm applied here)."""
        logits = self.final_norm(x) @ self.w.W_U
        logits = logits + self.w.b_U if self.w.b_U is not None else logits
        return softcap(logits, self.cfg.final_softcap)

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

    def node_outputs(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Every node's output in graph sender order [S, b, p, d] (``cache(...).node_outputs()``
        without the cache: each layer's outputs are written into the result as they are made,
        and no residual stream is kept, so the peak is the result plus one layer)."""
        tokens = self.check_tokens(tokens, attention_mask)
        b, p = tokens.shape
        S = 1 + self.cfg.n_layers * (self.cfg.n_heads + 1)
        out = torch.empty(S, b, p, self.cfg.d_model, dtype=self.dtype, device=self.device)
        cache = ForwardCache(self.cfg, input=torch.empty(0))
        with torch.no_grad():
            self._run(tokens, attention_mask, cache=cache, unembed=False, sink=out)
        return out

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
        sink: Tensor | None = None,
    ) -> tuple[Tensor, ForwardCache | None]:
        """The forward; ``cache`` records into it; with ``sink`` [S, b, p, d] the node outputs
        are written there instead and the cache keeps only what the run needs (attention
        biases)."""
        hooks = self._merged_hooks(hooks) if self._installed else (hooks or {})

        def hook(point: str, x: Tensor) -> Tensor:
            fn = hooks.get(point)
            return x if fn is None else fn(x)

        tokens = self.check_tokens(tokens, attention_mask)
        ctx = self.context(tokens, attention_mask, position_ids)
        resid = hook("embed", self.embed(tokens, ctx))
        H = self.cfg.n_heads
        if sink is not None:
            sink[0] = resid
        elif cache is not None:
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
                if self.cfg.post_norms:
                    b_O = self.w.layers[layer].b_O
                    pre = attn + b_O if b_O is not None else attn
                    attn = self.post_attn(layer, pre)
                    cache.attn_pre.append(pre)
                    cache.attn_post.append(attn)
                else:
                    attn = attn + bias if bias is not None else attn
                cache.attn_bias.append(bias)
                if sink is not None:
                    base = 1 + layer * (H + 1)
                    sink[base : base + H] = heads.permute(2, 0, 1, 3)
                    del heads
                else:
                    cache.resid_pre.append(resid)
                    cache.heads.append(heads)
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
                if cache is not None and sink is None:
                    cache.resid_mid.append(resid)
                mlp = hook(f"mlp_out.{layer}", self.mlp(layer, resid))
                resid = resid + mlp
            if sink is not None:
                sink[1 + layer * (H + 1) + H] = mlp
            elif cache is not None:
                cache.mlps.append(mlp)
        resid = hook("resid_final", resid)
        if cache is not None:
            cache.resid_final = resid
        if not unembed:
            return resid, cache
        return self.unembed(resid), cache
