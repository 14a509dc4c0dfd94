"""Help and messages that say what is true, and exit code 2 with one line for every problem
the user can fix."""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import pytest
import torch

import circuitfind as cf
from circuitfind import cli, commands
from circuitfind.cli import main
from tests.factories import make_hf_model
from tests.test_cli import fake_engine  # noqa: F401 (the fixture)
from tests.test_render import small_circuit

ROOT = Path(__file__).resolve().parents[1]


def _help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _subcommands() -> list[list[str]]:
    parser = cli.build_parser()
    top = next(a for a in parser._actions if a.dest == "command")
    out = [[c] for c in top.choices]  # type: ignore[union-attr]
    return [*out, ["zoo", "list"], ["zoo", "train"]]


def _one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------- help
def test_every_default_is_shown_once_and_never_as_none(capsys):
    for command in _subcommands():
        text = _help(capsys, *command)
        assert "(default: None)" not in text, command
        flat = " ".join(text.split())
        for option in re.split(r"\s(?=--?[a-z])", flat):
            assert option.count("(default:") <= 1, (command, option)
    text = " ".join(_help(capsys, "discover").split())
    assert "--target-faithfulness F the smallest circuit reaching faithfulness F (0.9" in text
    assert "(default: cpu) (default" not in text


def test_discover_help_lists_tasks_methods_and_ablations(capsys):
    text = _help(capsys, "discover")
    for name in [*cli.TASKS, *cli._methods(), *cli.ABLATIONS]:
        assert f"\n  {name} " in text, name


def test_tasks_prints_plain_text(capsys):
    assert main(["tasks"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text
    assert not re.search(r"\S::\s*$", text, flags=re.M)
    assert "--first-token" in text and "--metric NAME" in text


def _all_flags() -> set[str]:
    return {o for p in cli._walk(cli.build_parser()) for o in p._option_string_actions}


def test_every_flag_the_docs_and_messages_mention_exists():
    flags = _all_flags()
    files = [ROOT / "README.md", *sorted((ROOT / "circuitfind").rglob("*.py"))]
    # flags of standalone scripts (python -m circuitfind.bench.speed ...) are theirs
    own = {
        m.group(1)
        for f in files
        for m in re.finditer(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", f.read_text())
    }
    missing = []
    for f in files:
        for number, line in enumerate(f.read_text().splitlines(), 1):
            if "scripts/" in line or re.search(r"\b(pip|pytest|dot|npm)\W", line):
                continue  # another program's flags
            for m in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", line):
                if m.group(0) not in flags and m.group(0) not in own:
                    missing.append(f"{f.relative_to(ROOT)}:{number}: {m.group(0)}")
    assert not missing, missing
    assert {"--metric", "--first-token", "--tokenizer", "--trust-remote-code"} <= flags


def test_api_hints_name_the_cli_flag():
    from circuitfind.errors import InputError

    text = cli._one_line(InputError("answer ' Mary Ann' is 2 tokens; use first_token=True"))
    assert "--first-token" in text
    assert all(flag in _all_flags() for flag in cli._API_HINTS.values())


def test_render_suffix_error_lists_html(tmp_path, capsys):
    path = small_circuit().to_json(tmp_path / "c.json")
    err = _one_line(capsys, main(["render", str(path), "-o", str(tmp_path / "x.jpg")]))
    assert ".html" in err and ".svg" in err and ".png" in err


def test_json_keys_are_one_set(tmp_path, capsys, fake_engine):  # noqa: F811
    argv = ["discover", "--model", "m", "--task", "toy", "--out", str(tmp_path / "run")]
    assert main([*argv, "--top-n", "20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_edges"] > 0 and summary["n_edges_total"] > summary["n_edges"]
    assert not {"edges", "total_edges", "time_s"} & set(summary)
    assert summary["timing"]["total_s"] >= summary["timing"]["load_s"] >= 0
    graph = cf.Graph.from_model(cf.load(make_hf_model("gpt2")))
    path = cf.Circuit(graph, torch.ones(graph.valid.shape), graph.valid.clone()).to_json(
        tmp_path / "c.json"
    )
    assert main(["evaluate", str(path), "--model", "m", "--task", "t", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_edges"] == result["n_edges_total"] == graph.n_edges
    assert not {"edges", "total_edges"} & set(result)
    assert "n_edges_total" in cli.__doc__ and "total_edges" not in cli.__doc__


# ---------------------------------------------------------------------------- exit codes
@pytest.mark.parametrize(
    "extra",
    [
        ["--batch-size", "0"],
        ["--steps", "0"],
        ["--n", "-3"],
        ["--threshold", "-1"],
        ["--target-faithfulness", "-1"],
        ["--target-faithfulness", "nan"],
        ["--threads", "0"],
    ],
)
def test_bad_numbers_are_usage_errors(capsys, extra):
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--model", "zoo:x", "--task", "ioi", *extra])
    err = _one_line(capsys, exc.value.code)
    assert extra[0] in err


def test_debug_is_accepted_after_the_subcommand(tmp_path, monkeypatch):
    import importlib

    def boom(*args, **kwargs):
        raise ValueError("broke")

    monkeypatch.setattr(importlib.import_module("circuitfind.render"), "render", boom)
    path = small_circuit().to_json(tmp_path / "c.json")
    with pytest.raises(ValueError):
        main(["render", str(path), "--debug"])
    with pytest.raises(ValueError):
        main(["render", "--debug", str(path), "-q"])


def test_out_that_is_a_file_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        commands, "_load_model_and_task", lambda args: pytest.fail("loaded a model")
    )
    (tmp_path / "f").write_text("x")
    err = _one_line(
        capsys,
        main(["discover", "--model", "zoo:x", "--task", "ioi", "--out", str(tmp_path / "f")]),
    )
    assert "--out" in err and "is a file" in err


@pytest.mark.parametrize("source", ["./nowhere", "../nowhere/m", "/no/such/dir", "~/nope", "a/b/c"])
def test_a_local_looking_path_that_does_not_exist_is_no_hub_lookup(source, capsys, monkeypatch):
    import transformers

    def hub(*args, **kwargs):
        raise AssertionError("looked the path up on the hub")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", hub)
    err = _one_line(capsys, main(["evaluate", "c.json", "--model", source, "--task", "ioi"]))
    assert "does not exist" in err or "No such file" in err or "c.json" in err


def test_local_path_rule():
    from circuitfind.loading import looks_local

    for local in ["./m", "../m", "/m", "~/m", "a/b/c", "models\\x" if False else "./x/y"]:
        assert looks_local(local), local
    for hub in ["gpt2", "owner/name", "EleutherAI/pythia-70m", "zoo:ioi"]:
        assert not looks_local(hub), hub


def _evaluate(capsys, model_dir: Path, tmp_path: Path, *extra: str) -> str:
    path = small_circuit().to_json(tmp_path / "c.json")
    code = main(["evaluate", str(path), "--model", str(model_dir), "--task", "ioi", *extra])
    return _one_line(capsys, code)


def test_remote_code_names_the_opt_in(tmp_path, capsys):
    d = tmp_path / "remote"
    d.mkdir()
    config = {"model_type": "my-own", "auto_map": {"AutoModelForCausalLM": "m.M"}}
    (d / "config.json").write_text(json.dumps(config))
    err = _evaluate(capsys, d, tmp_path)
    assert "--trust-remote-code" in err and "own Python code" in err
    assert "config.json and weights" not in err


def test_unsupported_family_says_so(tmp_path, capsys):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    err = _evaluate(capsys, d, tmp_path)
    assert "'bert'" in err and "supported families" in err and "gpt2" in err


def test_no_config_and_no_weights_say_what_is_missing(tmp_path, capsys):
    d = tmp_path / "empty"
    d.mkdir()
    assert "no config.json" in _evaluate(capsys, d, tmp_path)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    assert "no weights" in _evaluate(capsys, d, tmp_path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_is_refused_without_suggesting_weights_only_false(tmp_path, capsys):
    from transformers import GPT2Config

    d = tmp_path / "pickled"
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10).save_pretrained(d)
    marker = tmp_path / "ran"
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Payload(marker)}, f)
    err = _evaluate(capsys, d, tmp_path)
    assert "pickle" in err and "safetensors" in err
    assert "weights_only" not in err and not marker.exists()


def test_user_errors_of_the_standard_library_exit_2():
    bad = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert "UTF-8" in cli._user_error(bad)
    assert "check the path" in cli._user_error(PermissionError(13, "Permission denied", "/x"))
    assert cli._user_error(ValueError("internal")) is None


def test_missing_tokenizer_warning_is_whole_and_names_the_fix(tmp_path, caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitfind.loading import load

    d = tmp_path / "notok"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)).save_pretrained(d)
    with caplog.at_level(logging.WARNING, logger="circuitfind.loading"):
        model = load(d)
    assert model.tokenizer is None
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "tokenizer=" in text and "--tokenizer" in text and "token ids" in text
    assert text.rstrip().endswith(".")


def test_discover_and_evaluate_count_prompt_tokens_that_became_unknown(capsys):
    from types import SimpleNamespace

    model = SimpleNamespace(tokenizer=SimpleNamespace(unk_token_id=7, unk_token="<unk>"))
    clean = torch.tensor([[1, 7, 7, 0], [1, 2, 3, 7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])  # the last 7 is padding
    task = SimpleNamespace(clean=clean, attention_mask=mask)
    assert cli._count_unknown(model, task, "p.jsonl") == 2
    err = capsys.readouterr().err
    assert "2 prompt tokens of p.jsonl are unknown" in err and "in 1 of 2 prompts" in err
    assert cli._count_unknown(SimpleNamespace(tokenizer=None), task, "x") == 0
