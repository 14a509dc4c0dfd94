"""A planted-circuit model: a real GPT-2 whose weights are set by hand so that the circuit is known.

The task is induction on a repeated segment (``A_1..A_8 A_1..A_7 -> A_8``). Two heads carry it:

- ``a0.h0``, a previous-token head: its query and key read the positional embedding (position i
  attends to i-1) and its value copies the token there into the PREV subspace;
- ``a1.h0``, an induction head: its query reads the current token, its key reads PREV (K-composition
  with ``a0.h0``), its value reads the token, and it writes that token into the OUT subspace, the
  only subspace the unembedding reads.

Every other head and both MLPs read whatever they like (token, position, PREV, OUT, junk) but write
only into a JUNK subspace that no circuit receiver and no logit reads. Two tricks make "no effect"
exact rather than approximate:

- LayerNorm is made linear: its epsilon (1e16) swamps the variance of the residual stream, so
  ``sqrt(var + eps)`` is the constant ``1e8`` (in float32 ``var + 1e16 == 1e16`` exactly for any
  variance under ~5e8) and the weight 1e8 cancels it: LN(x) = x - mean(x);
- every vector written to the residual stream lies in the span of ``u_j = (e_{2j} - e_{2j+1})/√2``
  (zero mean), so the mean subtraction is the identity on it. The ``u_j`` are the "virtual"
  coordinates of the layout below; readers read through them too.

So a junk writer's output never reaches a circuit receiver's input or the logits: its every edge
has exactly zero effect under any ablation, and every gradient through it is zero.

The circuit edges (``PLANTED_EDGES``) say what they carry: ``position`` edges carry the positional
embedding, identical in a clean and a corrupted prompt, so resample ablation cannot see them (they
matter for mean and zero ablation); ``token`` edges carry prompt-dependent information and matter
for every ablation. :func:`ground_truth` returns the edge set an ablation can detect.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
from torch import Tensor

from circuitfind.graph import Graph
from circuitfind.tasks import Task

__all__ = [
    "PLANTED_EDGES",
    "PLANTED_NODES",
    "SEGMENT",
    "ground_truth",
    "ground_truth_nodes",
    "planted_model",
    "planted_task",
]

VOCAB = 16  # tokens t0..t15
N_POS = 16  # positions
SEGMENT = 8  # the repeated segment; prompts are 2 * SEGMENT - 1 tokens long

# virtual coordinates (each one is a zero-mean direction u_j of the real residual stream)
POS = slice(0, N_POS)
TOK = slice(16, 16 + VOCAB)
PREV = slice(32, 32 + VOCAB)
OUT = slice(48, 48 + VOCAB)
JUNK = slice(64, 72)
D_VIRTUAL = 72
D_MODEL = 2 * D_VIRTUAL
N_HEADS = 4
D_HEAD = D_MODEL // N_HEADS
D_MLP = 32
LN_EPS = 1e16

PREV_SCALE = 10.0  # attention logit of the previous position in a0.h0 (others: 0)
IND_SCALE = 8.0  # attention logit of the matching position in a1.h0
OUT_SCALE = 6.0  # logit of the copied token

PLANTED_NODES: tuple[str, ...] = ("a0.h0", "a1.h0")
PLANTED_EDGES: dict[str, str] = {
    "input->a0.h0<q>": "position",
    "input->a0.h0<k>": "position",
    "input->a0.h0<v>": "token",
    "a0.h0->a1.h0<k>": "token",
    "input->a1.h0<q>": "token",
    "input->a1.h0<v>": "token",
    "a1.h0->logits": "token",
}


def _basis() -> Tensor:
    """U [d_model, d_virtual]: column j is u_j = (e_{2j} - e_{2j+1}) / sqrt(2)."""
    U = torch.zeros(D_MODEL, D_VIRTUAL)
    j = torch.arange(D_VIRTUAL)
    U[2 * j, j] = 2**-0.5
    U[2 * j + 1, j] = -(2**-0.5)
    return U


def _head_block(rows: list[tuple[slice, Tensor]]) -> Tensor:
    """A [d_virtual, d_head] read matrix: each (virtual slice, [len, d_head] block) placed in."""
    W = torch.zeros(D_VIRTUAL, D_HEAD)
    for where, block in rows:
        W[where, : block.shape[1]] = block
    return W


def planted_model(seed: int = 0) -> Any:
    """The planted GPT2LMHeadModel (random distractor weights drawn with ``seed``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_POS,
        n_embd=D_MODEL,
        n_layer=2,
        n_head=N_HEADS,
        n_inner=D_MLP,
        layer_norm_epsilon=LN_EPS,
        tie_word_embeddings=False,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=gen) * scale

    U = _basis()
    eye = torch.eye(VOCAB)
    shift = torch.zeros(N_POS, N_POS)  # query at position i points at key position i - 1
    for i in range(1, N_POS):
        shift[i, i - 1] = 1.0
    qk = math.sqrt(D_HEAD)  # GPT-2 divides attention logits by sqrt(d_head)

    # per layer, per head: (W_Q, W_K, W_V) virtual [d_virtual, d_head]; W_O virtual [d_head, d_v]
    def junk_out(scale: float = 0.5) -> Tensor:
        W = torch.zeros(D_HEAD, D_VIRTUAL)
        W[:, JUNK] = rnd(D_HEAD, JUNK.stop - JUNK.start, scale=scale / math.sqrt(D_HEAD))
        return W

    def rnd_read(*where: slice, scale: float = 1.0) -> Tensor:
        W = torch.zeros(D_VIRTUAL, D_HEAD)
        for s in where:
            W[s] = rnd(s.stop - s.start, D_HEAD, scale=scale)
        return W

    heads: list[list[tuple[Tensor, Tensor, Tensor, Tensor]]] = [[], []]
    # layer 0, head 0: previous-token head (the circuit)
    W_O = torch.zeros(D_HEAD, D_VIRTUAL)
    W_O[:VOCAB, PREV] = eye
    heads[0].append(
        (
            _head_block([(POS, shift * PREV_SCALE * qk)]),
            _head_block([(POS, torch.eye(N_POS))]),
            _head_block([(TOK, eye)]),
            W_O,
        )
    )
    # layer 0, head 1: another previous-token head, written to junk
    heads[0].append(
        (
            _head_block([(POS, shift * PREV_SCALE * qk)]),
            _head_block([(POS, torch.eye(N_POS))]),
            _head_block([(TOK, eye)]),
            junk_out(),
        )
    )
    # layer 0, head 2: uniform attention over the prefix (no query/key), token values, to junk
    heads[0].append((torch.zeros(D_VIRTUAL, D_HEAD), torch.zeros(D_VIRTUAL, D_HEAD),
                     rnd_read(TOK), junk_out()))  # fmt: skip
    # layer 0, head 3: random reads of token and position, to junk
    heads[0].append((rnd_read(POS, TOK), rnd_read(POS, TOK), rnd_read(POS, TOK), junk_out()))
    # layer 1, head 0: induction head (the circuit)
    W_O = torch.zeros(D_HEAD, D_VIRTUAL)
    W_O[:VOCAB, OUT] = eye * OUT_SCALE
    heads[1].append(
        (
            _head_block([(TOK, eye * IND_SCALE * qk)]),
            _head_block([(PREV, eye)]),
            _head_block([(TOK, eye)]),
            W_O,
        )
    )
    # layer 1, head 1: an induction-like head keyed on the junk, to junk
    heads[1].append((rnd_read(TOK), rnd_read(JUNK), rnd_read(TOK), junk_out()))
    # layer 1, head 2: reads the previous-token head's output as its value, to junk
    heads[1].append((rnd_read(POS), rnd_read(POS), _head_block([(PREV, eye)]), junk_out()))
    # layer 1, head 3: reads everything at random, to junk
    heads[1].append(
        (rnd_read(POS, TOK, PREV), rnd_read(TOK, PREV, JUNK), rnd_read(TOK, PREV), junk_out())
    )

    with torch.no_grad():
        t = model.transformer
        t.wte.weight.zero_()
        t.wte.weight += (U[:, TOK] @ eye).T  # [vocab, d_model]
        t.wpe.weight.zero_()
        t.wpe.weight += U[:, POS].T
        ln_scale = math.sqrt(LN_EPS)
        for layer, block in enumerate(t.h):
            for ln in (block.ln_1, block.ln_2):
                ln.weight.fill_(ln_scale)
                ln.bias.zero_()
            W = block.attn.c_attn.weight  # Conv1D [d_model, 3 * d_model]
            W.zero_()
            block.attn.c_attn.bias.zero_()
            block.attn.c_proj.weight.zero_()  # [d_model (head-concat), d_model]
            block.attn.c_proj.bias.zero_()
            for h, (wq, wk, wv, wo) in enumerate(heads[layer]):
                cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
                for j, w in enumerate((wq, wk, wv)):
                    W[:, j * D_MODEL + cols.start : j * D_MODEL + cols.stop] = U @ w
                block.attn.c_proj.weight[cols] = wo @ U.T
            # MLPs: read signal and junk, write junk only
            w_in = torch.zeros(D_VIRTUAL, D_MLP)
            reads = (TOK, PREV, JUNK) if layer == 0 else (TOK, PREV, OUT, JUNK)
            for s in reads:
                w_in[s] = rnd(s.stop - s.start, D_MLP, scale=0.5)
            w_out = torch.zeros(D_MLP, D_VIRTUAL)
            w_out[:, JUNK] = rnd(D_MLP, JUNK.stop - JUNK.start, scale=0.3)
            block.mlp.c_fc.weight.copy_(U @ w_in)
            block.mlp.c_fc.bias.copy_(rnd(D_MLP, scale=0.1))
            block.mlp.c_proj.weight.copy_(w_out @ U.T)
            block.mlp.c_proj.bias.zero_()
        t.ln_f.weight.fill_(ln_scale)
        t.ln_f.bias.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight += (U[:, OUT] @ eye).T  # [vocab, d_model]: reads OUT only
    return model


def planted_task(n: int = 32, seed: int = 0) -> Task:
    """Induction pairs for the planted model: clean ``A A[:-1] -> A[-1]``, corrupted ``B B[:-1]``
    with a fresh segment B whose last token differs; metric: logit(A[-1]) - logit(B[-1])."""
    rng = random.Random(seed)
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n):
        a = rng.sample(range(VOCAB), SEGMENT)
        b = rng.sample(range(VOCAB), SEGMENT)
        while b[-1] == a[-1]:
            b = rng.sample(range(VOCAB), SEGMENT)
        clean.append(a + a[:-1])
        corrupted.append(b + b[:-1])
        answer.append(a[-1])
        wrong.append(b[-1])
    return Task.from_tokens(
        clean,
        corrupted,
        answer,
        wrong,
        metric="logit_diff",
        name="planted-induction",
        description=f"planted model: repeated segment of {SEGMENT} distinct tokens",
    )


def ground_truth(graph: Graph, ablation: str = "mean") -> Tensor:
    """[S, R] bool: the planted edges an ablation can see (resample: the ``token`` edges only)."""
    out = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
    for name, carries in PLANTED_EDGES.items():
        if ablation == "resample" and carries == "position":
            continue
        e = graph.edges[name]
        out[e.sender_index, e.receiver_index] = True
    return out


def ground_truth_nodes() -> set[str]:
    """The planted heads (every ablation sees both)."""
    return set(PLANTED_NODES)
