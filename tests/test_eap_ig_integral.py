"""EAP-IG against its integral, computed on the Hugging Face model itself.

The engine's definitions (``circuitfind.methods.eap``), for an edge s -> r, prompts n:

- ``eap-ig-inputs``:  (1/n) sum_prompts sum_pos (A_s - out_s) . (1/k) sum_{j=1..k} g_r(alpha_j)
  where g_r(alpha) = dm/d(input of r) in the run whose input embeddings are
  A_input + alpha (E_clean - A_input), alpha_j = j/k (a right Riemann sum: the clean point is in,
  the ablated one is out), and A_s - out_s is taken at the clean run.
- ``eap-ig-activations``: the same, but in run alpha every node's output is pinned to
  A_s + alpha (out_s - A_s) (its value set, its gradient path kept).

The reference here never touches the engine's forward: it hooks the HF modules (the projections
that read each head's q/k/v, the MLP's and the final norm's inputs) with zero probes, takes the
gradient at each head's own projection units with plain autograd, and maps it back to the
receiver's input with autograd through HF's own norm and projection modules. Grouped-query
models are first "ungrouped" into an equivalent multi-head HF model (each query head gets its own
copy of its group's key/value weights), which is what a per-query-head key/value receiver is.
Sender outputs are read from the same HF modules (a head's output is z_h @ W_O[h], the bias b_O
belonging to no node).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import circuitfind as cf
from circuitfind.tasks import Task
from tests.factories import FAMILY_CONFIGS, VOCAB, make_hf_model, method_scores

STEPS = 3


# ---------------------------------------------------------------------------- HF anatomy
@dataclass
class _Layer:
    ln1: nn.Module  # the norm the heads read through (its input is the receivers' input)
    projs: list[nn.Module]  # the modules projecting ln1's output to q/k/v units
    units: dict[tuple[str, int], tuple[int, slice]]  # (qkv, head) -> (proj index, output units)
    out_proj: nn.Module  # z [.., H * d_head] -> the attention output
    conv1d: bool  # GPT-2's Conv1D (weight [in, out]) instead of nn.Linear ([out, in])
    ln2: nn.Module  # the MLP's norm
    mlp: nn.Module


@dataclass
class _Anatomy:
    embed: nn.Module  # its output is the input node
    layers: list[_Layer]
    final_norm: nn.Module
    n_heads: int
    d_head: int


def _anatomy(hf: Any) -> _Anatomy:
    c = hf.config
    kind = c.model_type
    if kind == "gpt2":
        H, d = c.n_head, c.n_embd
        dh = d // H
        layers = [
            _Layer(
                b.ln_1,
                [b.attn.c_attn],
                {
                    (x, h): (0, slice(j * d + h * dh, j * d + (h + 1) * dh))
                    for j, x in enumerate("qkv")
                    for h in range(H)
                },
                b.attn.c_proj,
                True,
                b.ln_2,
                b.mlp,
            )
            for b in hf.transformer.h
        ]
        return _Anatomy(hf.transformer.drop, layers, hf.transformer.ln_f, H, dh)
    if kind == "gpt_neox":
        H = c.num_attention_heads
        dh = c.hidden_size // H
        layers = [
            _Layer(
                b.input_layernorm,
                [b.attention.query_key_value],
                {
                    (x, h): (0, slice(h * 3 * dh + j * dh, h * 3 * dh + (j + 1) * dh))
                    for j, x in enumerate("qkv")
                    for h in range(H)
                },
                b.attention.dense,
                False,
                b.post_attention_layernorm,
                b.mlp,
            )
            for b in hf.gpt_neox.layers
        ]
        return _Anatomy(hf.gpt_neox.emb_dropout, layers, hf.gpt_neox.final_layer_norm, H, dh)
    if kind == "gpt_neo":
        H = c.num_heads
        dh = c.hidden_size // H
        blocks = hf.transformer.h
        layers = [
            _Layer(
                b.ln_1,
                [b.attn.attention.q_proj, b.attn.attention.k_proj, b.attn.attention.v_proj],
                {
                    (x, h): (j, slice(h * dh, (h + 1) * dh))
                    for j, x in enumerate("qkv")
                    for h in range(H)
                },
                b.attn.attention.out_proj,
                False,
                b.ln_2,
                b.mlp,
            )
            for b in blocks
        ]
        return _Anatomy(hf.transformer.drop, layers, hf.transformer.ln_f, H, dh)
    # llama, qwen2, mistral (ungrouped: as many key/value heads as query heads)
    H = c.num_attention_heads
    assert c.num_key_value_heads == H
    dh = getattr(c, "head_dim", None) or c.hidden_size // H
    layers = [
        _Layer(
            b.input_layernorm,
            [b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj],
            {
                (x, h): (j, slice(h * dh, (h + 1) * dh))
                for j, x in enumerate("qkv")
                for h in range(H)
            },
            b.self_attn.o_proj,
            False,
            b.post_attention_layernorm,
            b.mlp,
        )
        for b in hf.model.layers
    ]
    return _Anatomy(hf.model.embed_tokens, layers, hf.model.norm, H, dh)


def _ungrouped(hf: Any) -> Any:
    """An HF model equal to ``hf`` whose query heads each have their own key/value weights."""
    c = hf.config
    n_kv = getattr(c, "num_key_value_heads", None)
    if n_kv is None or n_kv == c.num_attention_heads:
        return hf
    g = c.num_attention_heads // n_kv
    cfg = copy.deepcopy(c)
    cfg.num_key_value_heads = c.num_attention_heads
    out = type(hf)(cfg)
    out.config._attn_implementation = "eager"
    state = {}
    for name, p in hf.state_dict().items():
        if ".k_proj." in name or ".v_proj." in name:
            p = p.reshape(n_kv, -1, *p.shape[1:]).repeat_interleave(g, 0).reshape(-1, *p.shape[1:])
        state[name] = p
    out.load_state_dict(state)
    return out.eval()


def _head_outputs(layer: _Layer, z: Tensor, H: int, dh: int) -> Tensor:
    """Each head's z_h @ W_O[h] from the output projection's input z: [H, b, p, d]."""
    W = layer.out_proj.weight  # Conv1D: [H dh, d]; Linear: [d, H dh]
    W = W if layer.conv1d else W.T
    zh = z.reshape(*z.shape[:-1], H, dh)
    return torch.einsum("bphe,hed->hbpd", zh, W.reshape(H, dh, -1))


# ---------------------------------------------------------------------------- HF runs
class _HFRun:
    """Hooks on the HF modules: read node outputs, pin them, put zero probes on receivers."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf
        self.an = _anatomy(hf)

    def node_outputs(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        """[S, b, p, d]: input, then per layer its heads and its MLP (the engine's order)."""
        an, rec = self.an, {}
        handles = [an.embed.register_forward_hook(lambda m, a, o: rec.update(emb=o.detach()))]
        for i, ly in enumerate(an.layers):
            handles.append(
                ly.out_proj.register_forward_pre_hook(
                    lambda m, a, i=i: rec.update({("z", i): a[0].detach()})
                )
            )
            handles.append(
                ly.mlp.register_forward_hook(lambda m, a, o, i=i: rec.update({("m", i): o}))
            )
        try:
            with torch.no_grad():
                self.hf(tokens, attention_mask=mask)
        finally:
            for h in handles:
                h.remove()
        outs = [rec["emb"][None]]
        with torch.no_grad():
            for i, ly in enumerate(an.layers):
                outs.append(_head_outputs(ly, rec[("z", i)], an.n_heads, an.d_head))
                outs.append(rec[("m", i)].detach()[None])
        return torch.cat(outs)

    def receiver_grads(
        self,
        task: Task,
        tokens: Tensor,
        mask: Tensor | None,
        *,
        embed: Tensor | None = None,
        pinned: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """dm/d(input of r) [b, p, d] for every receiver, by its engine name.

        ``embed`` replaces the input node's output; ``pinned`` [S, b, p, d] sets every node's
        output value (the gradient still flows through the node)."""
        an, H = self.an, self.an.n_heads
        streams: dict[int, Tensor] = {}
        probes: dict[Any, Tensor] = {}
        handles = []

        def on_embed(m: Any, a: Any, o: Tensor) -> Tensor:
            if pinned is not None:
                return pinned[0].clone()
            return o if embed is None else embed.clone()

        handles.append(an.embed.register_forward_hook(on_embed))
        for i, ly in enumerate(an.layers):
            base = 1 + i * (H + 1)

            def keep_stream(m: Any, a: Any, i: int = i) -> None:
                streams[i] = a[0].detach()

            def probe_proj(m: Any, a: Any, o: Tensor, key: Any) -> Tensor:
                probes[key] = torch.zeros_like(o, requires_grad=True)
                return o + probes[key]

            def pin_attn(m: Any, a: Any, o: Tensor, ly: _Layer = ly, base: int = base) -> Tensor:
                if pinned is None:
                    return o
                value = pinned[base : base + H].sum(0)
                if m.bias is not None:
                    value = value + m.bias
                return o + (value - o).detach()

            def pin_mlp(m: Any, a: Any, o: Tensor, base: int = base) -> Tensor:
                return o if pinned is None else o + (pinned[base + H] - o).detach()

            def probe_ln2(m: Any, a: Any, i: int = i) -> tuple[Tensor, ...]:
                probes[("m", i)] = torch.zeros_like(a[0], requires_grad=True)
                return (a[0] + probes[("m", i)], *a[1:])

            handles.append(ly.ln1.register_forward_pre_hook(keep_stream))
            for j, proj in enumerate(ly.projs):
                handles.append(
                    proj.register_forward_hook(
                        lambda m, a, o, key=("proj", i, j): probe_proj(m, a, o, key)
                    )
                )
            handles.append(ly.out_proj.register_forward_hook(pin_attn))
            handles.append(ly.mlp.register_forward_hook(pin_mlp))
            handles.append(ly.ln2.register_forward_pre_hook(probe_ln2))

        def probe_final(m: Any, a: Any) -> tuple[Tensor, ...]:
            probes["logits"] = torch.zeros_like(a[0], requires_grad=True)
            return (a[0] + probes["logits"], *a[1:])

        handles.append(an.final_norm.register_forward_pre_hook(probe_final))
        try:
            logits = self.hf(tokens, attention_mask=mask).logits
        finally:
            for h in handles:
                h.remove()
        value = task.metric_fn(logits.float(), None, reduce="none").sum()
        keys = list(probes)
        grads = dict(zip(keys, torch.autograd.grad(value, [probes[k] for k in keys])))

        out = {"logits": grads["logits"]}
        for i, ly in enumerate(an.layers):
            out[f"m{i}"] = grads[("m", i)]
            for j, proj in enumerate(ly.projs):
                names = [(x, h) for (x, h), (pj, _) in ly.units.items() if pj == j]
                g = grads[("proj", i, j)]
                cot = torch.zeros(len(names), *g.shape)
                for n, key in enumerate(names):
                    units = ly.units[key][1]
                    cot[n, ..., units] = g[..., units]
                x = streams[i].expand(len(names), *streams[i].shape).clone().requires_grad_(True)
                (gx,) = torch.autograd.grad(proj(ly.ln1(x)), x, cot)
                for n, (qkv, h) in enumerate(names):
                    out[f"a{i}.h{h}<{qkv}>"] = gx[n]
        return out


def _reference(
    hf: Any,
    graph: cf.Graph,
    task: Task,
    ablation: str,
    mode: str,
    steps: int,
    alphas: list[float] | None = None,
) -> Tensor:
    """Scores [S, R] by the definitions in the module docstring, on the HF model alone
    (``alphas`` overrides the path's points, k/steps for k = 1..steps)."""
    run = _HFRun(_ungrouped(hf))
    tokens, mask = task.clean, task.attention_mask
    clean = run.node_outputs(tokens, mask)  # [S, b, p, d]
    if ablation == "resample":
        A = run.node_outputs(task.corrupted, mask)
    elif ablation == "zero":
        A = torch.zeros_like(clean)
    else:  # mean over every real token of every clean prompt
        real = (mask if mask is not None else torch.ones(tokens.shape)).float()[None, :, :, None]
        A = ((clean * real).sum((1, 2)) / real.sum())[:, None, None].expand_as(clean)
    grad_sum: dict[str, Tensor] = {}
    alphas = alphas if alphas is not None else [k / steps for k in range(1, steps + 1)]
    for alpha in alphas:
        if mode == "eap-ig-inputs":
            grads = run.receiver_grads(task, tokens, mask, embed=A[0] + alpha * (clean[0] - A[0]))
        else:
            grads = run.receiver_grads(task, tokens, mask, pinned=A + alpha * (clean - A))
        for name, g in grads.items():
            grad_sum[name] = grad_sum.get(name, 0) + g / len(alphas)
    diff = (A - clean).double()
    scores = torch.full((graph.n_senders, graph.n_receivers), float("nan"), dtype=torch.float64)
    for name, r in graph.receiver_index.items():
        up = int(graph.n_upstream[r])
        g = grad_sum[name].double()  # [b, p, d]
        scores[:up, r] = torch.einsum("sbpd,bpd->s", diff[:up], g) / len(task)
    return scores.float()


def _task(n: int = 4, T: int = 7, seed: int = 0, padded: bool = False) -> Task:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, T), generator=g)
    corrupted = torch.randint(0, VOCAB, (n, T), generator=g)
    answer = torch.randint(0, VOCAB, (n,), generator=g)
    wrong = torch.randint(0, VOCAB, (n,), generator=g)
    if not padded:
        return Task.from_tokens(clean, corrupted, answer=answer, wrong=wrong)
    lengths = [T, T - 2, T - 1, T - 3][:n]
    return Task.from_tokens(
        [c[:k].tolist() for c, k in zip(clean, lengths)],
        [c[:k].tolist() for c, k in zip(corrupted, lengths)],
        answer=answer,
        wrong=wrong,
    )


def _check(hf: Any, task: Task, ablation: str, mode: str, steps: int = STEPS) -> None:
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    got = method_scores(model, task, mode, ablation, batch_size=3, steps=steps).edges
    want = _reference(hf, graph, task, ablation, mode, steps)
    v = graph.valid
    scale = float(want[v].abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(got[v], want[v], atol=2e-5 * scale + 1e-6, rtol=1e-3)
    assert torch.isnan(got[~v]).all()


def test_ungrouping_keeps_the_logits():
    hf = make_hf_model("llama-gqa-llama3rope")
    tokens = _task().clean
    with torch.no_grad():
        a, b = hf(tokens).logits, _ungrouped(hf)(tokens).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# The HF-side reference reads each family's own modules; it knows the families below. For
# gptj and phi3 (fused / unusual module layouts) and the post-norm families (gemma2,
# gemma3_text, olmo2: a head's edge goes through its layer's post-norm, which this reference
# does not model) multi-step EAP-IG is not checked against an independent integral yet; their
# one-step EAP-IG equals EAP, which equals the gradient of a float edge mask (test_patching).
_REFERENCE_KNOWS = ("gpt2", "gpt_neo", "gpt_neox", "llama", "qwen2", "mistral", "gemma", "qwen3")
_INTEGRAL_CASES = [
    n
    for n in sorted(FAMILY_CONFIGS)
    if n.startswith(_REFERENCE_KNOWS) and not n.startswith(("gemma2", "gemma3"))
]


@pytest.mark.parametrize("mode", ["eap-ig-inputs", "eap-ig-activations"])
@pytest.mark.parametrize("name", _INTEGRAL_CASES)
def test_eap_ig_equals_the_riemann_sum_on_the_hf_model(name, mode):
    """Every family: the engine's k-step EAP-IG is the right Riemann sum of HF autograd
    gradients along the same path (resample ablation, batches of 3 that split the prompts)."""
    _check(make_hf_model(name), _task(), "resample", mode)


_ABLATION_CASES = [
    pytest.param(name, mode, ablation, marks=() if ablation == "mean" else pytest.mark.slow)
    for name in ("gpt2", "llama-gqa-llama3rope")
    for mode in ("eap-ig-inputs", "eap-ig-activations")
    for ablation in ("mean", "zero")
]


@pytest.mark.parametrize(("name", "mode", "ablation"), _ABLATION_CASES)
def test_eap_ig_path_starts_at_the_ablation(name, mode, ablation):
    """The path's ablated end is the ablation's own value (the mean, zero), padded prompts."""
    _check(make_hf_model(name), _task(padded=True), ablation, mode)


def test_reference_at_one_step_is_eap():
    """The reference's one-step sum is the clean gradient, i.e. EAP (a check of the reference)."""
    hf = make_hf_model("qwen2")
    task = _task()
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    eap = method_scores(model, task, "eap", batch_size=4).edges
    want = _reference(hf, graph, task, "resample", "eap-ig-inputs", 1)
    v = graph.valid
    torch.testing.assert_close(eap[v], want[v], atol=2e-5 * float(want[v].abs().max()), rtol=1e-3)


@pytest.mark.parametrize("steps", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_the_suites_reference_code_sum_is_the_left_riemann_sum(steps):
    """The agreement suite's EAP-IG-code variant (alpha = k/steps, k = 0..steps-1, built from
    the engine's right sum and the corrupted-point gradient) is that sum on the HF model."""
    from circuitfind.bench import agreement

    hf = make_hf_model("llama-gqa-llama3rope")
    task = _task()
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    eap = method_scores(model, task, "eap", batch_size=4).edges
    ig = method_scores(model, task, "eap-ig-inputs", batch_size=4, steps=steps).edges
    at_corrupted = agreement.corrupted_point_scores(model, task, batch_size=4)
    got = agreement.reference_code_scores(ig, eap, at_corrupted, steps)
    left = [k / steps for k in range(steps)]
    want = _reference(hf, graph, task, "resample", "eap-ig-inputs", steps, alphas=left)
    v = graph.valid
    torch.testing.assert_close(got[v], want[v], atol=2e-5 * float(want[v].abs().max()), rtol=1e-3)
