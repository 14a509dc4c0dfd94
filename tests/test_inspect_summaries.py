"""Attribution summaries that let completeness be read at a glance, and text that falls back to
the unknown token warned about and counted."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.cli import main
from circuitfind.inspect.attribute import attribute, attribution_summary
from tests.factories import VOCAB, make_hf_model


def test_summary_values_match_the_hf_model_and_ig_sums_to_their_difference():
    hf = make_hf_model("gpt2")
    model = cf.load(hf)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (2, 7), generator=gen)
    answer, wrong, base = 5, 9, 3
    scores = attribute(model, ids, answer, wrong, steps=64, baseline=base)
    rows = attribution_summary(model, ids, scores, answer, wrong, baseline=base)
    with torch.no_grad():  # independent reference: the HF model on the input and the baseline
        full = hf(ids).logits[:, -1]
        empty = hf(torch.full_like(ids, base)).logits[:, -1]
    for i, row in enumerate(rows):
        assert row["f_input"] == pytest.approx(float(full[i, answer] - full[i, wrong]), abs=1e-4)
        assert row["f_baseline"] == pytest.approx(
            float(empty[i, answer] - empty[i, wrong]), abs=1e-4
        )
        assert row["sum"] == pytest.approx(float(scores[i].sum()), abs=1e-6)
        assert row["expected"] == pytest.approx(row["f_input"] - row["f_baseline"], abs=1e-6)
        assert abs(row["gap"]) < 0.02 * abs(row["expected"]) + 1e-3  # completeness
        assert row["baseline_norm"] > 0
    grad = attribution_summary(model, ids, scores, answer, wrong, method="gradient")[0]
    assert grad["f_baseline"] is None and grad["expected"] is None


def test_attribute_command_prints_f_input_f_baseline_and_the_sum(capsys):
    prompt = "When Mary and John went to the store, John gave a drink to"
    argv = ["attribute", "--model", "zoo:ioi", "--prompt", prompt, "--answer", " Mary"]
    assert main([*argv, "--wrong", " John", "--steps", "8", "--baseline", " the"]) == 0
    out = capsys.readouterr().out
    assert "f(input)" in out and "f(baseline)" in out and "sum" in out
    assert "should equal f(input) - f(baseline)" in out
    assert main([*argv, "--wrong", " John", "--steps", "8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["expected"] == pytest.approx(summary["f_input"] - summary["f_baseline"])
    assert "note: the baseline's embedding is zero" in main_text([*argv, "--wrong", " John"])


def main_text(argv: list[str]) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


def test_lens_warns_and_counts_unknown_tokens(capsys):
    argv = ["lens", "--model", "zoo:induction-2l", "--json", "--prompt"]
    assert main([*argv, "a b c a b"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unknown_tokens"] == 5
    assert "5 of 5 tokens of --prompt are unknown" in captured.err
    assert "'a'" in captured.err and "'t0'" in captured.err  # what became <unk>, and real words
    assert main([*argv, "t1 t2 t3 t1 t2"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unknown_tokens"] == 0 and "unknown" not in captured.err


def test_text_files_are_checked_too(tmp_path, capsys):
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("Mary went home\nzzqx blorf\n")
    neg.write_text("John went home\n")
    argv = ["steer", "--model", "zoo:ioi", "--positive", str(pos), "--negative", str(neg)]
    main([*argv, "--prompt", "When Mary", "--max-new-tokens", "2", "--coeff", "1"])
    err = capsys.readouterr().err
    assert "pos.txt are unknown to the tokenizer" in err
