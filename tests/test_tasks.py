import json
import types

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuitfind.errors import InputError
from circuitfind.tasks import TASKS, Task, get_task
from circuitfind.tasks.cli import register
from circuitfind.tasks.ioi import single_token_names
from tests.task_helpers import bpe_tokenizer, word_tokenizer

# ---------------------------------------------------------------- Task basics


def test_from_tokens_pads_right_and_reads_out_last_real_token():
    task = Task.from_tokens([[1, 2, 3], [4, 5]], [[7, 8, 9], [6, 5]], [1, 2], [3, 4])
    assert task.clean.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert task.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert task.readout.tolist() == [2, 1]
    assert task.metric.name == "logit_diff"
    assert Task.from_tokens([[1, 2]], [[3, 4]], [1]).metric.name == "logprob"
    assert Task.from_tokens([[1, 2]], [[3, 4]], [1]).attention_mask is None


def test_from_tokens_errors():
    with pytest.raises(InputError, match="pair 1: clean has 2 tokens"):
        Task.from_tokens([[1, 2], [3, 4]], [[1, 2], [3]], [1, 2])
    with pytest.raises(InputError, match="empty"):
        Task.from_tokens(torch.zeros(0, 3).long(), torch.zeros(0, 3).long(), torch.zeros(0))
    with pytest.raises(InputError, match="needs wrong answers"):
        Task.from_tokens([[1, 2]], [[3, 4]], [1], metric="logit_diff")


def test_slicing_and_batches():
    task = get_task("induction", word_tokenizer(), n=10, seed=1, length=4)
    sub = task[2:5]
    assert len(sub) == 3 and torch.equal(sub.clean, task.clean[2:5])
    assert sub.prompts == task.prompts[2:5]
    picked = task[torch.tensor([0, 7])]
    assert torch.equal(picked.answer, task.answer[[0, 7]])
    sizes = [len(b) for b in task.batches(4)]
    assert sizes == [4, 4, 2]
    assert torch.equal(torch.cat([b.clean for b in task.batches(4)]), task.clean)


def test_from_texts_errors_name_the_pair_and_both_tokenizations():
    tok = word_tokenizer()
    with pytest.raises(InputError) as err:
        Task.from_texts(tok, ["Then , Mary went"], ["Then , Mary"], [" John"], [" Mary"])
    msg = str(err.value)
    assert "pair 0" in msg and "(4 vs 3)" in msg and "'went'" in msg and "corrupted [" in msg
    with pytest.raises(InputError, match="is 2 tokens"):
        Task.from_texts(tok, ["Then , Mary"], ["Then , John"], [" John Mary"])
    task = Task.from_texts(tok, ["Then , Mary"], ["Then , John"], [" John Mary"], first_token=True)
    assert task.answer.tolist() == tok.convert_tokens_to_ids(["John"])


# ---------------------------------------------------------------- JSONL


def write(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def row(**kw):
    base = {"clean": "Then , Mary and John", "corrupted": "Then , Alice and Bob", "answer": " Tom"}
    base.update(kw)
    return json.dumps(base)


def test_jsonl_reads_pairs_and_picks_the_metric(tmp_path):
    tok = word_tokenizer()
    path = write(
        tmp_path, ["# a comment", row(wrong=" Bob"), "", row(answer=" Mary", wrong=" Tom")]
    )
    task = get_task(path, tok)
    assert len(task) == 2 and task.metric.name == "logit_diff" and task.name == "prompts"
    assert task.answer.tolist() == tok.convert_tokens_to_ids(["Tom", "Mary"])
    task = Task.from_jsonl(write(tmp_path, [row(), row()]), tok)
    assert task.wrong is None and task.metric.name == "logprob"
    sets = Task.from_jsonl(write(tmp_path, [row(answer=[" Tom", " Mary"])]), tok)
    assert sets.answer.shape == (1, 2)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([row(), "{not json"], "prompts.jsonl line 2: not valid JSON"),
        ([row(), json.dumps({"clean": "a"})], "line 2: missing field"),
        ([row(wrong=" Bob"), row()], "line 2: 'wrong' is missing here"),
        ([row(corrupted="Then , Alice")], r"line 1: clean and corrupted tokenize .* \(5 vs 3\)"),
        ([row(answer=" Tom Mary")], "line 1: answer ' Tom Mary' is 2 tokens"),
        ([row(extra=1)], "unknown field"),
        (["# only a comment"], "no prompt pairs"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, lines, match):
    with pytest.raises(InputError, match=match):
        Task.from_jsonl(write(tmp_path, lines), word_tokenizer())


def test_get_task_unknown_name():
    with pytest.raises(InputError, match="unknown task 'nope'"):
        get_task("nope", word_tokenizer())


# ---------------------------------------------------------------- IOI


@pytest.mark.parametrize("tok_fn", [word_tokenizer, bpe_tokenizer])
def test_ioi_alignment(tok_fn):
    tok = tok_fn()
    task = get_task("ioi", types.SimpleNamespace(tokenizer=tok), n=40, seed=3)
    assert task.metric.name == "logit_diff" and task.answer.shape == (40,)
    names = {tok.convert_tokens_to_ids(tok.tokenize(" " + x))[0] for x in single_token_names(tok)}
    for i in range(len(task)):
        length = int(task.readout[i]) + 1
        c, x = task.clean[i, :length], task.corrupted[i, :length]
        differ = (c != x).nonzero().flatten().tolist()
        # clean and corrupted differ only at the three name slots, all names
        assert 2 <= len(differ) <= 3 and all(int(c[j]) in names for j in differ)
        io, s = int(task.answer[i]), int(task.wrong[i])
        assert io != s
        # the IO appears once, the subject twice; neither in the corrupted prompt
        assert c.tolist().count(io) == 1 and c.tolist().count(s) == 2
        assert io not in x.tolist() and s not in x.tolist()
        # corrupted: three distinct names
        assert len({int(x[j]) for j in differ}) == len(differ)
    # both orders: ABBA (IO first) and BABA (S first)
    firsts = [task.clean[i].tolist().index(int(task.answer[i])) for i in range(len(task))]
    seconds = [task.clean[i].tolist().index(int(task.wrong[i])) for i in range(len(task))]
    assert any(f < s for f, s in zip(firsts, seconds)) and any(
        f > s for f, s in zip(firsts, seconds)
    )


def test_ioi_is_deterministic_per_seed():
    tok = word_tokenizer()
    a, b = get_task("ioi", tok, n=20, seed=5), get_task("ioi", tok, n=20, seed=5)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
    assert a.prompts == b.prompts
    assert not torch.equal(a.answer, get_task("ioi", tok, n=20, seed=6).answer)


def test_ioi_keeps_single_token_names_and_explains_otherwise():
    tok = bpe_tokenizer()
    kept = single_token_names(tok)
    assert "Mary" in kept and "Jessica" not in kept  # trained on the first 12 names only
    with pytest.raises(InputError) as err:
        get_task("ioi", tok, names=["Jessica", "Brandon", "Mary"])
    assert "one token" in str(err.value) and "Jessica" in str(err.value)
    with pytest.raises(InputError, match="needs a tokenizer"):
        get_task("ioi", types.SimpleNamespace(tokenizer=None))


# ---------------------------------------------------------------- induction


@pytest.mark.parametrize("tok_fn", [word_tokenizer, bpe_tokenizer])
def test_induction_repeats_and_fresh_corruption(tok_fn):
    tok = tok_fn()
    task = get_task("induction", tok, n=16, seed=0, length=6)
    assert task.clean.shape == (16, 11) and task.attention_mask is None
    special = set(tok.all_special_ids)
    for i in range(16):
        c, x = task.clean[i].tolist(), task.corrupted[i].tolist()
        first = c[:6]
        assert len(set(first)) == 6 and not special & set(c)
        assert c[6:] == first[:5] and task.answer[i] == first[5]
        assert x[6:] == c[6:] and not set(x[:6]) & set(first)  # fresh first half
    again = get_task("induction", tok, n=16, seed=0, length=6)
    assert torch.equal(again.clean, task.clean)


def test_induction_without_tokenizer_uses_cfg():
    model = types.SimpleNamespace(tokenizer=None, cfg=types.SimpleNamespace(d_vocab=50))
    task = get_task("induction", model, n=4, length=3)
    assert task.clean.max() < 50 and task.prompts is None


# ---------------------------------------------------------------- greater-than


def test_greater_than_answer_sets():
    tok = word_tokenizer()
    task = get_task("greater-than", tok, n=12, seed=2)
    year = {tok.convert_tokens_to_ids(f"{y:02d}"): y for y in range(100)}
    assert task.metric.name == "prob_diff" and task.answer.ndim == 2
    for i in range(12):
        clean, corrupted = task.prompts[i]
        yy = int(clean.split(" 17")[1][:2])
        assert "1701" in corrupted and 2 <= yy <= 98
        answers = [year[int(t)] for t in task.answer[i] if t >= 0]
        wrongs = [year[int(t)] for t in task.wrong[i] if t >= 0]
        assert answers == list(range(yy + 1, 100)) and wrongs == list(range(yy + 1))
        differ = (task.clean[i] != task.corrupted[i]).nonzero().flatten().tolist()
        assert len(differ) == 1


def test_greater_than_needs_two_digit_tokens():
    with pytest.raises(InputError, match="'00' is"):
        get_task("greater-than", bpe_tokenizer())


# ---------------------------------------------------------------- running a model


def test_run_padded_equals_unpadded():
    torch.manual_seed(0)
    tok = word_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(cfg).eval()
    task = get_task("ioi", tok, n=6, seed=0)
    assert task.attention_mask is not None
    batched = task.run(model)
    for i in range(len(task)):
        length = int(task.readout[i]) + 1
        alone = model(task.clean[i : i + 1, :length]).logits[0, -1]
        torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)
    assert isinstance(task.score(model), float)
    kl = task.with_metric("kl").with_clean_logits(model)
    assert kl.score(model) == pytest.approx(0.0, abs=1e-6)
    assert kl.score(model, which="corrupted") > 0


def test_tasks_cli_lists_builtins(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["tasks", "--json"])
    assert args.func(args) == 0
    assert set(json.loads(capsys.readouterr().out)["tasks"]) == set(TASKS)
    args = parser.parse_args(["tasks"])
    assert args.func(args) == 0 and '"clean"' in capsys.readouterr().out
