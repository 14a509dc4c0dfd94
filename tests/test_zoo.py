import argparse
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitfind.errors import ModelLoadError
from circuitfind.tasks import get_task
from circuitfind.zoo import card, list_zoo, load_hf, resolve
from circuitfind.zoo.cli import register
from circuitfind.zoo.diagnostics import ablate_heads, hf_pattern_scores, repeated_tokens
from circuitfind.zoo.recipe import RECIPES, get_recipe
from circuitfind.zoo.train import train

ZOO = ["agreement", "docstring", "greater-than", "induction-2l", "ioi"]
FRESH_SEED = 4242  # not the evaluation seed of any training run (those are seed + 1000)


def test_the_zoo_ships_every_recipe():
    get_recipe("ioi")  # loads the built-in recipes
    assert set(ZOO) == set(RECIPES)  # the slow tier retrains exactly these
    assert set(ZOO) <= set(list_zoo())
    with pytest.raises(ModelLoadError, match="the zoo has"):
        resolve("nope")
    assert resolve("zoo:ioi") == resolve("ioi")


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_loads_and_meets_its_targets(name):
    path = resolve(name)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in path.iterdir()
    }
    info = card(name)
    rel = f"circuitfind/zoo/models/{name}"
    assert info["command"] == f"circuitfind zoo train {name} --seed {info['seed']} --out {rel}"
    assert info["meets_targets"]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == get_recipe(name).family
    recipe = get_recipe(name)
    with torch.no_grad():
        scores = recipe.evaluate(model, tok, FRESH_SEED)
    for key, target in recipe.targets.items():
        assert scores[key] >= target, (key, scores[key])


@pytest.mark.parametrize(("name", "task"), [("induction-2l", "induction"), ("ioi", "ioi")])
def test_builtin_tasks_run_on_the_zoo(name, task):
    model, tok = load_hf(name)
    t = get_task(task, tok, n=64, seed=FRESH_SEED, metric="accuracy")
    assert t.score(model) >= 0.9


def test_greater_than_builtin_on_the_zoo():
    model, tok = load_hf("greater-than")
    t = get_task("greater-than", tok, n=64, seed=FRESH_SEED)
    assert t.score(model, metric="accuracy") >= 0.9 and t.score(model) > 0.5


def test_induction_model_has_previous_token_and_induction_heads():
    model, tok = load_hf("induction-2l")
    tokens = repeated_tokens(range(128), n=32, length=10, seed=FRESH_SEED)
    scores = hf_pattern_scores(model, tokens)
    prev = scores["previous_token"][0]
    assert prev.max() > 0.5
    assert scores["induction"][1].max() > 0.5
    task = get_task("induction", tok, n=64, seed=FRESH_SEED, metric="accuracy")
    clean = task.score(model)
    assert clean >= 0.9
    # ablating the layer-0 previous-token heads breaks the copying
    heads = [(0, h) for h in range(prev.shape[0]) if prev[h] > 0.3]
    with ablate_heads(model, heads):
        assert task.score(model) < clean - 0.3


def test_ioi_model_is_llama_with_gqa():
    cfg = AutoModelForCausalLM.from_pretrained(resolve("ioi")).config
    assert cfg.num_key_value_heads < cfg.num_attention_heads and not cfg.tie_word_embeddings


def test_quick_training_is_deterministic_and_loadable(tmp_path):
    a = train("induction-2l", seed=3, out=tmp_path / "a", quick=True, progress=False)
    train("induction-2l", seed=3, out=tmp_path / "b", quick=True, progress=False)
    wa = load_file(tmp_path / "a" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["command"].endswith("--quick") and (tmp_path / "a" / "card.md").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model(torch.tensor([tok("t1 t2 t3")["input_ids"]])).logits.shape[-1] == len(tok)


def test_zoo_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["zoo", "list", "--json"])
    assert args.func(args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(ZOO) <= set(listed)
    out = tmp_path / "gt"
    args = parser.parse_args(["zoo", "train", "greater-than", "--seed", "1", "--out", str(out)])
    args.quick = True
    assert args.func(args) == 0
    assert (out / "card.json").is_file() and "wrote" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_full_training_reproduces_the_shipped_model(name, tmp_path):
    """The recipe reproduces the shipped model: bit for bit on the CPU model that trained it
    (float kernels differ between CPU models, so elsewhere the weights differ in their last
    bits and drift apart over training), and its targets and accuracies everywhere (measured
    on another CPU model: induction-2l retrained to previous-token score 0.73, shipped 0.93,
    both above the recipe's 0.5, at the same accuracy)."""
    from circuitfind.machine import cpu_name

    info = card(name)
    result = train(name, seed=info["seed"], out=tmp_path, progress=False)
    assert result["meets_targets"], result["scores"]
    # the behaviour the card reports; head diagnostics (pattern scores, which head an ablation
    # hits) may settle elsewhere in a retrained model, above the recipe's targets
    behaviour = [k for k in info["scores"] if "accuracy" in k and "ablated" not in k]
    assert behaviour
    for key in behaviour:
        assert result["scores"][key] == pytest.approx(info["scores"][key], abs=0.05), key
    if info.get("versions", {}).get("cpu") == cpu_name():
        shipped = load_file(resolve(name) / "model.safetensors")
        fresh = load_file(tmp_path / "model.safetensors")
        assert all(torch.equal(shipped[k], fresh[k]) for k in shipped)


def test_known_suite_reference_is_the_heads_that_write():
    """The known-circuits suite's induction reference (patterns + ablation) against a structural
    fact: after consolidation only heads with a non-negligible W_O write anything, so the
    reference must be exactly the pattern-fitting heads among them."""
    from circuitfind.bench.known import PATTERN_MIN, induction_reference

    model, tok = load_hf("induction-2l")
    ref = induction_reference(model, tok, seed=FRESH_SEED)
    H = model.config.n_head
    writes = {}
    for layer, block in enumerate(model.transformer.h):
        W = block.attn.c_proj.weight.detach().view(H, -1, model.config.n_embd)
        norms = W.pow(2).sum((1, 2)).sqrt()
        writes.update({f"a{layer}.h{h}": bool(norms[h] > 0.1 * norms.max()) for h in range(H)})
    prev = [
        f"a0.h{h}"
        for h in range(H)
        if ref["previous_token"][0][h] >= PATTERN_MIN and writes[f"a0.h{h}"]
    ]
    ind = [
        f"a1.h{h}" for h in range(H) if ref["induction"][1][h] >= PATTERN_MIN and writes[f"a1.h{h}"]
    ]
    assert ref["previous_token_heads"] == prev and len(prev) == 1
    assert ref["induction_heads"] == ind and len(ind) == 1
