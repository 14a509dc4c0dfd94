"""Random-weight Hugging Face models of every supported family, in ordinary and odd configs.

Weights are drawn with a larger spread than HF's default so that attention patterns are sharp
and rotary/masking/normalisation mistakes show up in the logits instead of hiding in noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 101


def _llama_rope(rope_type: str) -> dict[str, Any]:
    if rope_type == "llama3":
        return {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    if rope_type == "linear":
        return {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    return {"rope_type": "default", "rope_theta": 10000.0}


FAMILY_CONFIGS: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=3, n_head=4, n_positions=64)
    ),
    "gpt2-odd": lambda: GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            n_embd=36,
            n_layer=2,
            n_head=3,
            n_inner=20,
            n_positions=40,
            activation_function="relu",
            scale_attn_by_inverse_layer_idx=True,
            reorder_and_upcast_attn=True,
            tie_word_embeddings=False,
        )
    ),
    "gpt_neox-parallel": lambda: GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=96,
            rotary_pct=0.25,
            use_parallel_residual=True,
        )
    ),
    "gpt_neox-sequential": lambda: GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=40,
            rotary_pct=1.0,
            use_parallel_residual=False,
            attention_bias=False,
            hidden_act="gelu_new",
            tie_word_embeddings=True,
        )
    ),
    "llama-gqa-llama3rope": lambda: LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            rope_parameters=_llama_rope("llama3"),
        )
    ),
    "llama-mha-bias-linear-rope": lambda: LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=12,
            intermediate_size=40,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
            rope_parameters=_llama_rope("linear"),
        )
    ),
    "qwen2": lambda: Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            tie_word_embeddings=True,
        )
    ),
    "qwen2-sliding-mqa": lambda: Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=48,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            tie_word_embeddings=False,
        )
    ),
    "mistral-sliding": lambda: MistralForCausalLM(
        MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            sliding_window=5,
        )
    ),
    "qwen3-gqa-untied": lambda: Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=VOCAB,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,  # != d_model / n_heads
            intermediate_size=64,
            tie_word_embeddings=False,
        )
    ),
    "qwen3-sliding-mqa": lambda: Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            intermediate_size=48,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            attention_bias=True,
            tie_word_embeddings=True,
        )
    ),
    "gemma-mqa": lambda: GemmaForCausalLM(
        GemmaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=12,
            intermediate_size=48,
        )
    ),
    "gemma-untied": lambda: GemmaForCausalLM(
        GemmaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=12,
            intermediate_size=64,
            tie_word_embeddings=False,
        )
    ),
    "gemma2-softcap-sliding": lambda: Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=48,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=4.0,  # small caps: the tanh is far from linear here
            final_logit_softcapping=3.0,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
    ),
    "gemma2-mqa-untied": lambda: Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            intermediate_size=40,
            query_pre_attn_scalar=8,
            sliding_window=3,
            tie_word_embeddings=False,
        )
    ),
    "gemma3_text": lambda: Gemma3ForCausalLM(
        Gemma3TextConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=48,
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
            },
            final_logit_softcapping=5.0,
        )
    ),
    "gemma3_text-mqa-untied": lambda: Gemma3ForCausalLM(
        Gemma3TextConfig(
            vocab_size=VOCAB,
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=3,
            num_key_value_heads=1,
            head_dim=8,
            intermediate_size=40,
            sliding_window=3,
            layer_types=["full_attention", "sliding_attention"],
            tie_word_embeddings=False,
        )
    ),
    "phi3-partial-longrope": lambda: Phi3ForCausalLM(
        Phi3Config(
            vocab_size=VOCAB,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            # prompts of 5+ tokens use the long factors (HF switches on the batch's longest
            # position, so a padded batch's short prompt would too: all test prompts are long)
            original_max_position_embeddings=4,
            partial_rotary_factor=0.5,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.5, 2.0],
                "long_factor": [2.0, 3.0, 5.0],
                "attention_factor": 1.1,  # (default sqrt(3) here: patterns too sharp to test)
            },
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    ),
    "phi3-sliding-mqa": lambda: Phi3ForCausalLM(
        Phi3Config(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=40,
            sliding_window=4,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        )
    ),
    "gptj": lambda: GPTJForCausalLM(
        GPTJConfig(
            vocab_size=VOCAB,
            n_embd=48,
            n_layer=3,
            n_head=4,
            rotary_dim=8,  # of d_head 12
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
        )
    ),
    "gptj-full-rotary": lambda: GPTJForCausalLM(
        GPTJConfig(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_inner=40,
            rotary_dim=16,  # the whole head
            n_positions=64,
            activation_function="gelu",
            bos_token_id=1,
            eos_token_id=2,
        )
    ),
    "olmo2-gqa": lambda: Olmo2ForCausalLM(
        Olmo2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    ),
    "olmo2-mqa-bias-tied": lambda: Olmo2ForCausalLM(
        Olmo2Config(
            vocab_size=VOCAB,
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=3,
            num_key_value_heads=1,
            intermediate_size=40,
            attention_bias=True,  # b_O sits inside the post-norm
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        )
    ),
    "gpt_neo": lambda: GPTNeoForCausalLM(
        GPTNeoConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_layers=3,
            num_heads=4,
            attention_types=[[["global", "local"], 1], [["local"], 1]],
            window_size=4,
            max_position_embeddings=64,
        )
    ),
}


def make_hf_model(name: str, *, seed: int = 0, scale: float = 0.25) -> Any:
    """A random-weight HF model (eager attention, eval mode) with weights of spread ``scale``."""
    torch.manual_seed(seed)
    model = FAMILY_CONFIGS[name]()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln" in pname:
                p.copy_(
                    1.0 + 0.2 * torch.randn_like(p)
                    if p.dim() == 1 and "weight" in pname
                    else 0.2 * torch.randn_like(p)
                )
            else:
                p.normal_(0.0, scale)
        if model.config.model_type.startswith("gemma"):
            # Gemma multiplies embeddings by sqrt(d_model): keep the stream at the other
            # families' spread, so that float32 rounding stays far below the tolerance.
            model.get_input_embeddings().weight.div_(model.config.hidden_size**0.25)
    return model.eval()


def method_scores(
    model: Any,
    task: Any,
    method: str,
    ablation: str = "resample",
    *,
    batch_size: int = 32,
    checkpoint_dir: Any = None,
    **options: Any,
) -> Any:
    """One method's :class:`circuitfind.scores.Scores` over fresh prepared runs."""
    from pathlib import Path

    from circuitfind.methods import method_spec
    from circuitfind.runs import PreparedRuns

    runs = PreparedRuns(model, task, ablation, batch_size=batch_size)
    runs.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    return method_spec(method).function()(runs, **options)
