"""Tasks on token ids: ordinary tokens only, BOS where the family expects it, unknown words."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

import circuitfind as cf
from circuitfind.errors import InputError
from circuitfind.tasks import Task, get_task
from circuitfind.tasks.tokens import bos_prefix, ordinary_token_ids
from tests.factories import make_hf_model
from tests.task_helpers import word_tokenizer
from tests.tokenizer_fixtures import real_tokenizer


def ids_only(family, config):
    """A model without a tokenizer: just its family, vocabulary size and HF config."""
    return types.SimpleNamespace(
        tokenizer=None,
        cfg=types.SimpleNamespace(family=family, d_vocab=config.vocab_size),
        hf_model=types.SimpleNamespace(config=config),
    )


LLAMA2 = ids_only("llama", LlamaConfig(vocab_size=32000, bos_token_id=1, eos_token_id=2))
LLAMA3 = ids_only(
    "llama", LlamaConfig(vocab_size=128256, bos_token_id=128000, eos_token_id=[128001, 128009])
)
GPT2 = ids_only("gpt2", GPT2Config())
QWEN3 = ids_only("qwen3", Qwen2Config(vocab_size=151936))  # config names no special id
GEMMA3 = ids_only("gemma3_text", Gemma3TextConfig())


def test_ordinary_ids_without_tokenizer_follow_the_documented_layouts():
    assert ordinary_token_ids(GPT2) == list(range(50256))
    assert ordinary_token_ids(LLAMA3) == list(range(128000))
    assert ordinary_token_ids(LLAMA2) == list(range(512, 32000))
    assert ordinary_token_ids(QWEN3) == list(range(151643))
    assert ordinary_token_ids(GEMMA3) == list(range(512, 255999))


@pytest.mark.parametrize(
    ("name", "model"),
    [("gpt2", GPT2), ("llama3", LLAMA3), ("llama2", LLAMA2), ("qwen3", QWEN3), ("gemma3", GEMMA3)],
)
def test_ids_drawn_without_tokenizer_are_ordinary_for_the_real_tokenizer(name, model):
    """The id-only rule never draws what the family's real tokenizer calls special or bytes."""
    tok = real_tokenizer(name)
    with_tok = set(ordinary_token_ids(model, tok))
    without = set(ordinary_token_ids(model))
    assert without <= with_tok
    special = set(tok.all_special_ids)
    vocab = tok.get_vocab()
    byte_ids = {i for t, i in vocab.items() if t.startswith("<0x") and len(t) == 6}
    assert not (with_tok & special) and not (with_tok & byte_ids)
    assert len(without) > 0.9 * len(with_tok)  # the rule keeps nearly all ordinary tokens


def test_bos_rule_by_family():
    assert bos_prefix(LLAMA3) == [128000]
    assert bos_prefix(LLAMA2) == [1]
    assert bos_prefix(GEMMA3) == [2]
    assert bos_prefix(GPT2) == []
    assert bos_prefix(QWEN3) == []
    assert bos_prefix(LLAMA3, add_bos=False) == []
    assert bos_prefix(GPT2, add_bos=True) == [50256]
    with pytest.raises(InputError, match="add_bos=True"):
        bos_prefix(QWEN3, add_bos=True)


@pytest.mark.parametrize(("factory", "bos"), [("llama-gqa-llama3rope", 1), ("gpt2", None)])
def test_induction_on_a_model_without_tokenizer(factory, bos):
    hf = make_hf_model(factory)
    model = cf.load(hf)
    assert model.tokenizer is None
    task = get_task("induction", model, n=8, length=5)
    special = {hf.config.bos_token_id, hf.config.eos_token_id}
    body = task.clean[:, 1:] if bos is not None else task.clean
    if bos is not None:
        assert (task.clean[:, 0] == bos).all() and (task.corrupted[:, 0] == bos).all()
        assert task.clean.shape[1] == 1 + 2 * 5 - 1
    else:
        assert task.clean.shape[1] == 2 * 5 - 1
    assert not set(body.flatten().tolist()) & special
    assert task.meta["bos"] == (bos is not None)
    off = task.clean.shape[1] - 9
    assert (task.clean[:, off : off + 4] == task.clean[:, off + 5 :]).all()  # A then A[:-1]
    assert (task.answer == task.clean[:, off + 4]).all()
    no_bos = get_task("induction", model, n=8, length=5, add_bos=False)
    assert no_bos.clean.shape[1] == 9


@pytest.mark.parametrize("name", ["llama3", "gemma3", "gpt2", "qwen3"])
def test_add_bos_with_a_tokenizer(name):
    tok = real_tokenizer(name)
    family = {"llama3": "llama", "gemma3": "gemma3_text", "gpt2": "gpt2", "qwen3": "qwen3"}[name]
    model = types.SimpleNamespace(tokenizer=tok, cfg=types.SimpleNamespace(family=family))
    task = get_task("ioi", model, n=4)
    expects = family in ("llama", "gemma3_text")
    bos = -1 if tok.bos_token_id is None else tok.bos_token_id  # Qwen3 has no BOS token
    assert bool((task.clean[:, 0] == bos).all()) == expects
    forced = get_task("ioi", model, n=4, add_bos=not expects) if tok.bos_token_id else None
    if forced is not None:
        assert bool((forced.clean[:, 0] == bos).all()) == (not expects)
        assert forced.clean.shape[1] == task.clean.shape[1] + (-1 if expects else 1)


# ----------------------------------------------------------------- unknown words (issue 18)


def test_unknown_prompt_word_is_an_error_naming_it_and_the_pair():
    tok = word_tokenizer()
    with pytest.raises(InputError, match=r"pair 1: .*'Zoë'.*clean prompt"):
        Task.from_texts(
            tok,
            ["Then Mary", "Then Zoë"],
            ["Then John", "Then John"],
            [" Mary", " Mary"],
        )


def test_unknown_answer_is_an_error():
    tok = word_tokenizer()
    with pytest.raises(InputError, match=r"pair 0: .*'Xerxes'.*answer"):
        Task.from_texts(tok, ["Then Mary"], ["Then John"], [" Xerxes"])


def test_allow_unk_accepts_and_counts():
    tok = word_tokenizer()
    task = Task.from_texts(
        tok,
        ["Then Zoë gave", "Then Mary gave"],
        ["Then Björk gave", "Then John gave"],
        [" Mary", " Mary"],
        allow_unk=True,
    )
    assert task.meta["unk"] == 2 and task.meta["unk_words"] == ["Björk", "Zoë"]


def test_jsonl_unknown_word_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"clean": "Then Mary", "corrupted": "Then John", "answer": " Mary"}\n'
        '{"clean": "Then Mary", "corrupted": "Then Ångström", "answer": " Mary"}\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError, match=r"p.jsonl line 2: .*'Ångström'"):
        get_task(str(path), word_tokenizer())


def test_byte_level_tokenizers_have_no_unknown_words():
    tok = real_tokenizer("gpt2")
    task = Task.from_texts(tok, ["Then Zoë"], ["Then Zoë"], [" Zoë"], first_token=True)
    assert "unk" not in task.meta


def test_jsonl_allow_unk(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"clean": "Then Mary", "corrupted": "Then Ångström", "answer": " Mary"}\n',
        encoding="utf-8",
    )
    task = get_task(str(path), word_tokenizer(), allow_unk=True)
    assert task.meta["unk"] == 1


def test_no_bos_for_a_llama_trained_gpt2_style():
    """BOS = EOS (one <|endoftext|>, as the zoo's ioi model and SmolLM have): no BOS."""
    smol = ids_only("llama", LlamaConfig(vocab_size=49152, bos_token_id=0, eos_token_id=0))
    assert bos_prefix(smol) == []
    assert bos_prefix(smol, add_bos=True) == [0]
    zoo = cf.load("zoo:ioi")
    task = get_task("ioi", zoo, n=4)
    assert int(task.clean[0, 0]) != zoo.tokenizer.bos_token_id


def test_random_ordinary_tokens_for_probes():
    from circuitfind.tasks.tokens import random_ordinary_tokens

    ids = random_ordinary_tokens(LLAMA2, 4, 20, seed=3)
    assert ids.shape == (4, 20) and int(ids.min()) >= 512
    assert all(len(set(r.tolist())) == 20 for r in ids)
    assert torch.equal(ids, random_ordinary_tokens(LLAMA2, 4, 20, seed=3))
    gpt2 = random_ordinary_tokens(GPT2, 2, 50, seed=0)
    assert int(gpt2.max()) < 50256
