"""The standard task suite with the GPT-2, Llama-3, Gemma-3 and Qwen3 tokenizers: construction,
semantics of each prompt pair, BOS, registry and JSONL round trips (MIB's columns included)."""

from __future__ import annotations

import importlib
import json
import re
import types

import pytest
import torch

from circuitfind.errors import InputError
from circuitfind.tasks import TASKS, export_jsonl, get_task, import_jsonl
from circuitfind.tasks import agreement as agr
from circuitfind.tasks import factual as fact
from circuitfind.tasks import gendered_pronoun as gp
from circuitfind.tasks import sentiment as sent
from tests.tokenizer_fixtures import REAL, real_tokenizer

FAMILY = {"gpt2": "gpt2", "llama3": "llama", "gemma3": "gemma3_text", "qwen3": "qwen3"}
WITH_BOS = {"llama3", "gemma3"}
SUITE = ["docstring", "gendered-pronoun", "agreement", "mcqa", "arithmetic", "factual", "sentiment"]
MODULES = {
    "ioi": "ioi",
    "induction": "induction",
    "greater-than": "greater_than",
    **{name: name.replace("-", "_") for name in SUITE},
}


def model_for(name):
    tok = real_tokenizer(name)
    return tok, types.SimpleNamespace(tokenizer=tok, cfg=types.SimpleNamespace(family=FAMILY[name]))


def text_of(tok, ids):
    return tok.decode([int(t) for t in ids if int(t) >= 0])


def body(task, i, name, tok):
    ids = task.clean[i, : int(task.readout[i]) + 1].tolist()
    if name in WITH_BOS:
        assert ids[0] == tok.bos_token_id
        ids = ids[1:]
    elif tok.bos_token_id is not None:
        assert ids[0] != tok.bos_token_id
    return ids


def check_pair(task, i, name, tok):
    clean, corrupted = task.prompts[i]
    assert tok.decode(body(task, i, name, tok)) == clean
    assert clean != corrupted
    n_clean = int(task.readout[i]) + 1
    assert task.corrupted[i, :n_clean].shape[0] == n_clean
    if task.attention_mask is not None:
        assert int(task.attention_mask[i].sum()) == n_clean
    assert task.answer.ndim == 1  # single-token answers
    return clean, corrupted, text_of(tok, [task.answer[i]])


def semantics(task_name, task, i, clean, corrupted, answer, wrong):
    if task_name == "docstring":
        args = re.match(r"def \w+\(self, ([^)]*)\)", clean).group(1).split(", ")
        documented = re.findall(r":param (\w+):", clean)
        assert answer == " " + args[len(documented)] and documented == args[: len(documented)]
        assert sorted(w.strip() for w in wrong) == sorted(set(args) - {answer.strip()})
        assert answer.strip() not in re.findall(r"\w+", corrupted)  # random_random
    elif task_name == "gendered-pronoun":
        name = re.match(r"\w+,? (\w+)", clean).group(1)
        assert answer == (" she" if name in gp.FEMALE else " he") and wrong != answer
        other = re.match(r"\w+,? (\w+)", corrupted).group(1)
        assert (name in gp.FEMALE) != (other in gp.FEMALE)
    elif task_name == "agreement":
        subject = clean.split()[1]
        plural = any(subject == p for _, p in agr.NOUNS)
        forms = {v for pair in agr.VERBS for v in pair}
        assert answer.strip() in forms
        sing = {s for s, _ in agr.VERBS}
        assert (answer.strip() in sing) != plural
        assert corrupted.split()[1] != subject and corrupted.split()[2:] == clean.split()[2:]
    elif task_name == "mcqa":
        color = re.match(r"Question: The \w+ is (\w+)\.", clean).group(1)
        letter = re.search(rf"\n([A-D])\. {color}\n", clean).group(1)
        moved = re.search(rf"\n([A-D])\. {color}\n", corrupted).group(1)
        assert answer == " " + letter and wrong == " " + moved and letter != moved
    elif task_name == "arithmetic":
        assert answer == str(eval(clean[:-1])) and wrong == str(eval(corrupted[:-1]))
        assert answer != wrong
    elif task_name == "factual":
        capitals = dict(fact.CAPITALS)
        cap = next(c for c in capitals if re.search(rf"\b{c}\b", clean))
        cap2 = next(c for c in capitals if re.search(rf"\b{c}\b", corrupted))
        assert answer == " " + capitals[cap] and wrong == " " + capitals[cap2] and cap != cap2
    elif task_name == "sentiment":
        adj = re.search(r"was (\w+),", clean).group(1)
        positive = adj in sent.POSITIVE["adj"]
        assert answer.strip() in (("great", "good") if positive else ("terrible", "bad"))
        adj2 = re.search(r"was (\w+),", corrupted).group(1)
        assert (adj2 in sent.POSITIVE["adj"]) != positive


@pytest.mark.parametrize("task_name", SUITE)
@pytest.mark.parametrize("name", REAL)
def test_suite_task_construction(name, task_name):
    tok, model = model_for(name)
    task = get_task(task_name, model, n=12, seed=1)
    assert len(task) == 12 and task.clean.shape == task.corrupted.shape
    if task.attention_mask is None:
        assert (task.readout == task.clean.shape[1] - 1).all()
    else:
        assert torch.equal(task.readout, task.attention_mask.sum(-1) - 1)
    for i in range(len(task)):
        clean, corrupted, answer = check_pair(task, i, name, tok)
        wrong_ids = task.wrong[i].tolist() if task.wrong.ndim == 2 else [int(task.wrong[i])]
        wrong = [text_of(tok, [w]) for w in wrong_ids if w >= 0]
        semantics(
            task_name,
            task,
            i,
            clean,
            corrupted,
            answer,
            wrong if task.wrong.ndim == 2 else wrong[0],
        )
    again = get_task(task_name, model, n=12, seed=1)
    assert torch.equal(again.clean, task.clean) and torch.equal(again.answer, task.answer)


@pytest.mark.parametrize("name", REAL)
def test_arithmetic_operand_width_follows_the_tokenizer(name):
    _, model = model_for(name)
    add = get_task("arithmetic", model, n=8)
    sub = get_task("arithmetic", model, n=8, operator="-")
    whole = name in ("gpt2", "llama3")
    assert add.meta["operand_range"] == ([10, 99] if whole else [0, 9])
    for clean, _ in sub.prompts:
        assert "-" in clean and eval(clean[:-1]) >= 0


def test_suite_is_registered_with_sources_and_docstrings():
    assert set(SUITE) | {"ioi", "induction", "greater-than"} <= set(TASKS)
    for name, spec in TASKS.items():
        assert spec.source, name
        doc = importlib.import_module(f"circuitfind.tasks.{MODULES[name]}").__doc__
        assert doc and "etric" in doc and "orrupt" in doc, name
    assert get_task("sva", real_tokenizer("gpt2"), n=2).name == "agreement"


def test_bad_options_are_input_errors():
    tok = real_tokenizer("gpt2")
    with pytest.raises(InputError, match="corruption must be"):
        get_task("docstring", tok, corruption="nope")
    with pytest.raises(InputError, match="structure must be"):
        get_task("agreement", tok, structure="nope")
    with pytest.raises(InputError, match="counterfactual must be"):
        get_task("mcqa", tok, counterfactual="nope")
    with pytest.raises(InputError, match="one token"):
        get_task("arithmetic", real_tokenizer("llama2"))


# ----------------------------------------------------------------- JSONL


@pytest.mark.parametrize("task_name", ["ioi", "greater-than", *SUITE])
@pytest.mark.parametrize("name", ["gpt2", "gemma3"])
def test_jsonl_round_trip(tmp_path, name, task_name):
    tok, model = model_for(name)
    if task_name == "greater-than" and name != "gpt2":
        pytest.skip("greater-than needs GPT-2's two-digit year tokens")
    task = get_task(task_name, model, n=6, seed=2)
    path = tmp_path / "t.jsonl"
    assert export_jsonl(task, path, tok) == "text"
    back = get_task(str(path), model, add_bos=None if name not in WITH_BOS else True)
    for attr in ("clean", "corrupted", "readout", "answer", "wrong"):
        assert torch.equal(getattr(back, attr), getattr(task, attr)), attr


def test_jsonl_round_trip_token_ids(tmp_path):
    import circuitfind as cf
    from tests.factories import make_hf_model

    model = cf.load(make_hf_model("llama-gqa-llama3rope"))
    task = get_task("induction", model, n=5, length=4)
    path = tmp_path / "ind.jsonl"
    assert export_jsonl(task, path) == "ids"
    back = import_jsonl(path, model, metric="logprob")
    assert torch.equal(back.clean, task.clean) and torch.equal(back.answer, task.answer)


def test_mib_columns_are_accepted(tmp_path):
    tok = real_tokenizer("gpt2")
    q = "Question: The sky is blue. What color is the sky?\n"
    rows = [
        {  # MIB MCQA shape
            "prompt": q + "A. red\nB. blue\nAnswer:",
            "choices": {"label": [" A", " B"], "text": ["red", "blue"]},
            "answerKey": 1,
            "symbol_counterfactual": {
                "prompt": q + "B. red\nA. blue\nAnswer:",
                "choices": {"label": [" B", " A"], "text": ["red", "blue"]},
                "answerKey": 1,
            },
        }
    ]
    path = tmp_path / "mcqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = get_task(str(path), tok)
    assert text_of(tok, [task.answer[0]]) == " B" and text_of(tok, [task.wrong[0]]) == " A"
    arith = {
        "prompt": "23+45=",
        "label": 68,
        "operator": "+",
        "random_counterfactual": {"prompt": "11+12=", "label": 23},
    }
    ioi = {
        "prompt": "When Mary and John went to the store, John gave a drink to",
        "metadata": {"indirect_object": "Mary", "subject": "John", "random_c": "Bob"},
        "s2_io_flip_counterfactual": {
            "prompt": "When Mary and John went to the store, Mary gave a drink to"
        },
        "abc_counterfactual": {
            "prompt": "When Alice and Bob went to the store, Carl gave a drink to"
        },
    }
    for row, answer, wrong in [(arith, "68", "23"), (ioi, " Mary", " John")]:
        path.write_text(json.dumps(row) + "\n", encoding="utf-8")
        task = get_task(str(path), tok)
        assert text_of(tok, [task.answer[0]]) == answer and text_of(tok, [task.wrong[0]]) == wrong
    path.write_text(json.dumps(ioi) + "\n", encoding="utf-8")
    abc = get_task(str(path), tok, counterfactual="abc_counterfactual")
    assert abc.prompts[0][1].startswith("When Alice")
    del ioi["s2_io_flip_counterfactual"]
    ioi["other_counterfactual"] = ioi["abc_counterfactual"]
    path.write_text(json.dumps(ioi) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="counterfactual=NAME"):
        get_task(str(path), tok)


def test_eap_ig_columns_are_accepted(tmp_path):
    tok = real_tokenizer("gpt2")
    row = {
        "clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Alice and Bob went to the store, Carl gave a drink to",
        "correct_idx": 5335,
        "incorrect_idx": 1757,
    }
    path = tmp_path / "eap.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    task = get_task(str(path), tok)
    assert int(task.answer[0]) == 5335 and int(task.wrong[0]) == 1757
    assert task.metric.name == "logit_diff"
