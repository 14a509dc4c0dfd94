"""zoo:induction-2l — a two-layer GPT-2 (with MLPs) that copies repeated token sequences.

Vocabulary ``t0``..``t127`` (word-level), context 32, learned positions. Each training sequence
is random filler around a random segment of 2-15 tokens that occurs twice; the loss on the
positions of the second copy is weighted 4x and the filler's 0.1x. Scored on fresh repeated
sequences and by its attention heads.

Measured here: this recipe copies almost perfectly, but through *lagged* heads (layer-0 heads
attend 3-4 tokens back, layer-1 heads attend to the matching lagged position), not the
canonical previous-token (lag 1) + induction pair; reports/zoo.md shows the patterns. The
attention-only recipe of the issue formed canonical heads; with MLPs it did not in the
variants tried here (lr 3e-3, short-segment emphasis, short repeated chunks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel

from circuitfind.zoo.diagnostics import ablate_heads, head_scores, repeated_tokens
from circuitfind.zoo.tokenizer import word_level_tokenizer
from circuitfind.zoo.train import Recipe, Sampler, register_recipe

__all__ = ["CTX", "VOCAB"]

VOCAB = 128
CTX = 32
REPEAT_WEIGHT = 4.0  # 1 + 3x extra loss on the second copy
FILLER_WEIGHT = 0.1  # filler is unpredictable noise; its loss only slows learning
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
    return GPT2LMHeadModel(cfg), tok


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
        return tokens, weight

    return sample


def evaluate(model: Any, tok: Any, seed: int) -> dict[str, float]:
    from circuitfind.tasks import get_task

    tokens = repeated_tokens(range(VOCAB), n=200, length=12, seed=seed)
    with torch.no_grad():
        pred = model(tokens).logits.argmax(-1)
    # predictions of the second copy's tokens 2..L, made at positions L..2L-2
    acc = (pred[:, 12:-1] == tokens[:, 13:]).float().mean().item()
    scores = head_scores(model, repeated_tokens(range(VOCAB), n=64, length=12, seed=seed), 12)
    prev, ind = scores["previous_token"], scores["induction"]
    task = get_task("induction", tok, n=200, seed=seed, length=10, metric="accuracy")
    task_acc = task.score(model)
    best_prev = int(prev[0].argmax())
    with ablate_heads(model, [(0, best_prev)]):
        ablated = task.score(model)
    return {
        "repeat_accuracy": acc,
        "induction_task_accuracy": task_acc,
        "max_previous_token_score_l0": float(prev[0].max()),
        "max_induction_score_l1": float(ind[1].max()),
        "induction_task_accuracy_prev_head_ablated": ablated,
    }


register_recipe(
    Recipe(
        name="induction-2l",
        family="gpt2",
        summary=(
            "Two-layer GPT-2 (d_model 64, 4 heads, MLP 256) that completes repeated random "
            "token sequences (through lagged heads: layer 0 looks 3-4 tokens back; not a "
            "canonical previous-token + induction pair)."
        ),
        build=build,
        sampler=sampler,
        evaluate=evaluate,
        targets={"repeat_accuracy": 0.9},
        data=(
            f"Fresh random sequences of {CTX} tokens over t0..t{VOCAB - 1}: a random segment of "
            "2-15 tokens appears twice (directly repeated half the time, else after a gap of "
            "1-4 tokens), random filler elsewhere; 64 sequences a step; next-token loss "
            f"weighted {REPEAT_WEIGHT:g}x on the predictable positions of the second "
            f"copy, {FILLER_WEIGHT:g}x on filler. Scored on 200 fresh sequences A A (|A| = 12) "
            "and the built-in induction task."
        ),
        steps=2000,
        lr=1e-3,
        weight_decay=0.01,
        batch=64,
    )
)
