"""The inspection subcommands on a saved random model with a word-level tokenizer."""

from __future__ import annotations

import json

import pytest

from circuitfind.cli import main
from tests.factories import VOCAB, make_hf_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("model")
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")
    hf = make_hf_model("gpt2")
    hf.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


def _run(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_every_subcommand_has_help(capsys):
    for cmd in ("lens", "dla", "attention", "probe", "sae", "steer", "attribute"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "--json" in capsys.readouterr().out


def test_lens_dla_attention_attribute(model_dir, capsys, tmp_path):
    prompt = "w1 w2 w3 w4 w1 w2"
    out = _run(capsys, "lens", "--model", model_dir, "--prompt", prompt, "--json",
               "--plot", str(tmp_path / "lens.png"))  # fmt: skip
    assert len(out["layers"]) == 4 and out["layers"][-1]["kl"] < 1e-6
    assert (tmp_path / "lens.png").stat().st_size > 1000
    out = _run(capsys, "dla", "--model", model_dir, "--prompt", prompt, "--answer", "w3",
               "--wrong", "w7", "--json", "--plot", str(tmp_path / "dla.svg"))  # fmt: skip
    assert "bias" in out["contributions"] and (tmp_path / "dla.svg").exists()
    out = _run(capsys, "attention", "--model", model_dir, "--n", "2", "--seq-len", "6",
               "--json", "--plot", str(tmp_path / "scores.png"))  # fmt: skip
    assert set(out["scores"]) == {"previous-token", "duplicate-token", "induction", "copying"}
    _run(capsys, "attention", "--model", model_dir, "--prompt", prompt, "--json",
         "--plot", str(tmp_path / "grid.png"))  # fmt: skip
    assert (tmp_path / "grid.png").exists()
    out = _run(capsys, "attribute", "--model", model_dir, "--tokens", "1,2,3,4", "--answer", "5",
               "--method", "occlusion", "--json", "--plot", str(tmp_path / "attr.png"))  # fmt: skip
    assert len(out["scores"]) == 4
    assert main(["lens", "--model", model_dir]) == 2  # no prompt: a one-line error
    assert "--prompt" in capsys.readouterr().err


def test_probe_steer_sae(model_dir, capsys, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"text": f"w{i % 7 + 1} w{i % 50 + 10}", "label": i % 2} for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    dirs = tmp_path / "dirs.safetensors"
    out = _run(capsys, "probe", "--model", model_dir, "--data", str(data), "--json",
               "--save-directions", str(dirs), "--plot", str(tmp_path / "probe.png"))  # fmt: skip
    assert out["best_site"] in out["test_accuracy"]
    out = _run(capsys, "steer", "--model", model_dir, "--vector", str(dirs), "--layer", "1",
               "--prompt", "w1 w2", "--max-new-tokens", "3", "--json")  # fmt: skip
    assert set(out["generations"]) == {"coeff 0", "coeff 4"}
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("w1 w5\nw2 w5\n")
    neg.write_text("w1 w6\nw2 w6\n")
    out = _run(capsys, "steer", "--model", model_dir, "--positive", str(pos), "--negative",
               str(neg), "--prompt", "w3", "--ablate", "--max-new-tokens", "2", "--json",
               "--orthogonalize-out", str(tmp_path / "ortho"))  # fmt: skip
    assert (tmp_path / "ortho" / "config.json").exists()
    out = _run(capsys, "sae", "--model", model_dir, "--site", "resid_pre.1", "--random", "8",
               "--steps", "20", "--out", str(tmp_path / "sae"), "--feature", "0", "--json",
               "--plot", str(tmp_path / "sae.png"))  # fmt: skip
    assert out["metrics"]["l0"] > 0 and (tmp_path / "sae" / "cfg.json").exists()
