"""zoo:induction-2l — a two-layer, attention-only GPT-2 that copies repeated token sequences
through a layer-0 previous-token head and a layer-1 induction head.

Vocabulary ``t0``..``t127`` (word-level), context 32, learned positions, untied unembedding. The
MLPs (``c_fc``, ``c_proj``) are zeroed and frozen together with ``ln_2``, so the model is
attention-only in effect. Each training sequence is random filler around a random segment of
2-15 tokens that occurs twice (back to back half the time, else after a gap of 1-4 tokens); the
loss is the mean next-token loss plus 3x the mean loss on the predictable positions of the
second copy. AdamW lr 3e-3, 3,000 steps. Then a consolidation phase: 3,000 steps at lr 1e-3 with a
scale-free sparsity penalty on the heads' output weights (``head_sparsity``). After the first phase
the circuit is spread over two previous-token and three induction heads (a minimal faithful
circuit then needs about 13 edges); the penalty concentrates it in one previous-token head and
one induction head, so the model's circuit is the textbook four edges (input -> previous-token
value, previous-token -> induction key, input -> induction value, induction -> logits). An L1
(group-lasso) penalty does not do this: the norms that follow undo any uniform shrinkage.

What mattered (measured here, seed 0 unless said): the issue's recipe in a minimal plain-torch
attention-only pre-LN transformer (PyTorch default init) formed canonical heads within 500 steps
in every run (best previous-token 0.91-0.99, induction 0.93-0.97). Bisected towards GPT-2, the
culprit is GPT-2's embedding init (wte and wpe N(0, 0.02)): with it the plain module failed too
(copying through non-canonical heads, previous-token <= 0.07), while GPT-2's 0.02 init of the
attention weights with N(0, 1) embeddings still formed the pair. Presumably small embeddings let
the layer-0 attention output swamp token and position in the residual stream. Also needed here:
an untied unembedding with a small init (tied to N(0, 1) embeddings nothing was learned in 1,000
steps, the initial logits being large), and the loss weighting above (the per-position form 4x
on the repeat / 1x on filler formed the pair in 2 of 4 plain-module runs and 0 of 4 GPT-2 runs;
it puts ~55% of the loss on the repeat instead of ~80%).
Earlier, with std-0.02 embeddings, every variant (MLPs on or off, filler weights 0-1, untied,
initializer_range 0.08, larger or sinusoidal positions, short-segment emphasis) copied through
lagged heads (layer 0 attending 2-4 back) or did not copy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel

from circuitfind.zoo.diagnostics import ablate_heads, hf_pattern_scores, repeated_tokens
from circuitfind.zoo.recipe import Consolidation, Recipe, Sampler, register_recipe
from circuitfind.zoo.tokenizer import word_level_tokenizer

__all__ = ["CTX", "VOCAB"]

VOCAB = 128
CTX = 32
# the sampler marks the second copy's predictable positions with REPEAT_WEIGHT (filler
# FILLER_WEIGHT); with REPEAT_EXTRA set, the weights become mean loss + REPEAT_EXTRA x the mean
# loss on the marked positions (see sampler()), which is what the shipped model uses
REPEAT_WEIGHT = 4.0
FILLER_WEIGHT = 0.1
REPEAT_EXTRA = 3.0
LENGTHS = torch.arange(2, 16)
LENGTH_POWER = 0.0  # P(length) ~ length ** -LENGTH_POWER
# Sequences made of short repeated chunks (s s, |s| in 2..4), back to back. Tried 0.5: it
# learned slower and formed no induction heads by 2,000 steps.
CHUNK_FRACTION = 0.0


def build() -> tuple[Any, Any]:
    tok = word_level_tokenizer([f"t{i}" for i in range(VOCAB)])
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=CTX,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg.tie_word_embeddings = False
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        # embeddings N(0, 1) (PyTorch's default, not GPT-2's 0.02): with std 0.02 the layer-0
        # attention output swamps token and position in the residual stream and training finds
        # lagged heads instead of a previous-token + induction pair
        torch.nn.init.normal_(model.transformer.wte.weight, std=1.0)
        torch.nn.init.normal_(model.transformer.wpe.weight, std=1.0)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.n_embd) * 0.02)
        blocks: Any = model.transformer.h
        for block in blocks:  # attention-only: MLPs zeroed and frozen
            for lin in (block.mlp.c_fc, block.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
            for prm in [*block.mlp.parameters(), *block.ln_2.parameters()]:
                prm.requires_grad_(False)
    return model, tok


def head_sparsity(model: Any) -> Tensor:
    """Sum over layers of the Hoyer ratio ||n||_1 / ||n||_2 of the heads' output-weight norms
    n_h = ||W_O[h]||_F: 1 when one head writes, sqrt(heads) when all write equally. Unlike an
    L1 penalty it is scale-free, so the norms that follow cannot undo it by rescaling."""
    total = torch.zeros(())
    for block in model.transformer.h:
        heads = model.config.n_head
        W = block.attn.c_proj.weight.view(heads, -1, block.attn.c_proj.weight.shape[-1])
        norms = W.pow(2).sum((1, 2)).add(1e-8).sqrt()
        total = total + norms.sum() / norms.pow(2).sum().sqrt()
    return total


def sampler(_tok: Any) -> Sampler:
    def sample(gen: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
        tokens = torch.randint(0, VOCAB, (batch, CTX), generator=gen)
        weight = torch.full((batch, CTX - 1), FILLER_WEIGHT)
        probs = LENGTHS.float() ** -LENGTH_POWER
        for b in range(batch):
            if torch.rand(1, generator=gen) < CHUNK_FRACTION:
                pos = int(torch.randint(0, 3, (1,), generator=gen))
                while True:
                    length = int(torch.randint(2, 5, (1,), generator=gen))
                    if pos + 2 * length > CTX:
                        break
                    tokens[b, pos + length : pos + 2 * length] = tokens[b, pos : pos + length]
                    weight[b, pos + length : pos + 2 * length - 1] = REPEAT_WEIGHT
                    pos += 2 * length
                continue
            length = int(LENGTHS[torch.multinomial(probs, 1, generator=gen)])
            gap = int(torch.randint(1, 5, (1,), generator=gen))
            if torch.rand(1, generator=gen) < 0.5:
                gap = 0
            gap = min(gap, CTX - 2 * length)
            room = CTX - 2 * length - gap
            start = int(torch.randint(0, room + 1, (1,), generator=gen))
            seg = tokens[b, start : start + length].clone()
            second = start + length + gap
            tokens[b, second : second + length] = seg
            # targets tokens[second + 1 : second + length] are predictable by induction
            weight[b, second : second + length - 1] = REPEAT_WEIGHT
        if REPEAT_EXTRA:
            # loss = mean CE over all positions + REPEAT_EXTRA x mean CE over the second copy
            rep = weight == REPEAT_WEIGHT
            weight = 1.0 + REPEAT_EXTRA * rep.float() * (rep.numel() / rep.sum().clamp(min=1))
        return tokens, weight

    return sample


def evaluate(model: Any, tok: Any, seed: int) -> dict[str, float]:
    from circuitfind.tasks import get_task

    tokens = repeated_tokens(range(VOCAB), n=200, length=12, seed=seed)
    with torch.no_grad():
        pred = model(tokens).logits.argmax(-1)
    # predictions of the second copy's tokens 2..L, made at positions L..2L-2
    acc = (pred[:, 12:-1] == tokens[:, 13:]).float().mean().item()
    scores = hf_pattern_scores(model, repeated_tokens(range(VOCAB), n=64, length=12, seed=seed))
    prev, ind = scores["previous_token"], scores["induction"]
    task = get_task("induction", tok, n=200, seed=seed, length=10, metric="accuracy")
    task_acc = task.score(model)
    best_prev = int(prev[0].argmax())
    with ablate_heads(model, [(0, best_prev)]):
        ablated = task.score(model)
    prev_heads = [(0, h) for h in range(prev.shape[1]) if prev[0, h] > 0.3] or [(0, best_prev)]
    with ablate_heads(model, prev_heads):
        ablated_all = task.score(model)
    return {
        "repeat_accuracy": acc,
        "induction_task_accuracy": task_acc,
        "max_previous_token_score_l0": float(prev[0].max()),
        "max_induction_score_l1": float(ind[1].max()),
        "induction_task_accuracy_prev_head_ablated": ablated,
        "induction_task_accuracy_prev_heads_ablated": ablated_all,  # every layer-0 head > 0.3
    }


register_recipe(
    Recipe(
        name="induction-2l",
        family="gpt2",
        summary=(
            "Two-layer attention-only GPT-2 (d_model 64, 4 heads; MLPs zeroed and frozen) that "
            "completes repeated random token sequences with layer-0 previous-token heads and "
            "layer-1 induction heads."
        ),
        build=build,
        sampler=sampler,
        evaluate=evaluate,
        targets={
            "repeat_accuracy": 0.9,
            "max_previous_token_score_l0": 0.5,
            "max_induction_score_l1": 0.5,
        },
        data=(
            f"Fresh random sequences of {CTX} tokens over t0..t{VOCAB - 1}: a random segment of "
            "2-15 tokens appears twice (directly repeated half the time, else after a gap of "
            "1-4 tokens), random filler elsewhere; 64 sequences a step; loss = mean next-token "
            f"loss + {REPEAT_EXTRA:g}x the mean loss on the predictable positions of the second "
            "copy. Embeddings initialised N(0, 1), untied unembedding N(0, 0.02). Scored on 200 "
            "fresh sequences A A (|A| = 12) and the built-in induction task."
        ),
        steps=3000,
        consolidation=Consolidation(
            steps=3000,
            lr=1e-3,
            weight=6.0,
            penalty=head_sparsity,
            description=(
                "then 3,000 steps at constant lr 1e-3 (fresh AdamW) with 6x the per-layer Hoyer "
                "ratio of the heads' W_O norms added to the loss: the circuit, spread over two "
                "previous-token and three induction heads after the first phase, concentrates "
                "in one of each (the other heads' outputs go to ~0)"
            ),
        ),
        lr=3e-3,
        weight_decay=0.01,
        batch=64,
    )
)
