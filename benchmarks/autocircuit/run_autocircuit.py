"""Run auto-circuit's EAP, EAP-IG, ACDC and per-edge patching on weights saved by circuitfind.

Runs inside the auto-circuit virtual environment (``setup_venv.sh``), never in circuitfind's own:
auto-circuit needs TransformerLens 2.x and an older transformers. It imports nothing from
circuitfind. Usage:

    .venv-autocircuit/bin/python benchmarks/autocircuit/run_autocircuit.py WORK_DIR

WORK_DIR holds ``request.json`` (what to run), and per model NAME ``NAME/config.json`` (a
GPT2Config dict), ``NAME/model.safetensors`` (the HF GPT-2 state dict) and
``NAME/tokens.safetensors`` (clean, corrupted [n, T]; answer, wrong [n]). Results go to
``WORK_DIR/result.json``: wall times (median of repeats) and every edge's score under
auto-circuit's own edge names (``A0.1->A1.2.Q``, ``Resid Start->MLP 0``, ``MLP 1->Resid End``).
No hub access: the HF model is built from the config and the TransformerLens model from it,
and tokens are passed directly (no tokenizer is loaded).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch as t
from safetensors.torch import load_file


def _tl_model(d: Path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(**json.loads((d / "config.json").read_text()))
    hf = GPT2LMHeadModel(hf_cfg)
    hf.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
    hf.tie_weights()
    hf.eval()
    cfg = HookedTransformerConfig(
        n_layers=hf_cfg.n_layer,
        d_model=hf_cfg.n_embd,
        d_head=hf_cfg.n_embd // hf_cfg.n_head,
        n_heads=hf_cfg.n_head,
        d_mlp=4 * hf_cfg.n_embd,
        d_vocab=hf_cfg.vocab_size,
        n_ctx=hf_cfg.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=hf_cfg.layer_norm_epsilon,
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False,
        device="cpu",
    )
    sd = convert_gpt2_weights(hf, cfg)
    model = HookedTransformer(cfg)
    # No folding or centring: the TransformerLens model computes exactly the HF model.
    model.load_and_process_state_dict(
        sd,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    model.cfg.use_attn_result = True
    model.cfg.use_attn_in = True
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    with t.no_grad():
        toks = load_file(str(d / "tokens.safetensors"))["clean"][:2]
        diff = (model(toks) - hf(toks).logits).abs().max().item()
    return model, diff


def _median_time(fn, repeat: int, warmup: bool = True) -> tuple[float, list[float], object]:
    out = fn() if warmup else None  # warm-up (and the value we keep)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs, out


def _acdc_sample(model, loader, spec: dict) -> dict:
    """auto-circuit's own ACDC over a given list of edges, in the given order (every other edge
    stays in, untried): ``spec["acdc_edges"]`` (their names) and tau = base x 10^exp
    (``acdc_tau_base``, ``acdc_tau_exp``). Each trial is timed where their loop takes the next
    edge (a wrapper around the progress bar it iterates), and each trial's KL to the clean run
    is recorded where they compute it; their code runs unchanged otherwise."""
    import auto_circuit.prune_algos.ACDC as acdc_mod
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores

    names = list(spec["acdc_edges"])
    by_name = {e.name: e for e in model.edges}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(
            f"acdc-sample: {len(missing)} edges unknown to auto-circuit: {missing[:3]}"
        )
    trial_s: list[float] = []
    order: list[str] = []
    kl: list[float] = []
    real_tqdm, real_kl = acdc_mod.tqdm, acdc_mod.multibatch_kl_div

    class Timed:
        def __init__(self, items):
            self.items = list(items)

        def set_description_str(self, *args, **kwargs):
            pass

        def __iter__(self):
            for e in self.items:
                order.append(e.name)
                start = time.perf_counter()
                yield e  # their loop body runs here: one trial
                trial_s.append(time.perf_counter() - start)

    def tqdm(items, *args, **kwargs):
        items = list(items)
        if items and hasattr(items[0], "dest"):
            return Timed(items)
        return real_tqdm(items, *args, **kwargs)

    def recording_kl(*args, **kwargs):
        out = real_kl(*args, **kwargs)
        kl.append(float(out))
        return out

    all_edges = model.edges
    # Their ACDC sorts model.edges by destination layer (stable): the list's order survives.
    model.edges = [by_name[n] for n in names]
    acdc_mod.tqdm, acdc_mod.multibatch_kl_div = tqdm, recording_kl
    try:
        start = time.perf_counter()
        ps = acdc_prune_scores(
            model,
            loader,
            None,
            tao_exps=[int(spec["acdc_tau_exp"])],
            tao_bases=[int(spec["acdc_tau_base"])],
        )
        seconds = time.perf_counter() - start
    finally:
        acdc_mod.tqdm, acdc_mod.multibatch_kl_div = real_tqdm, real_kl
        model.edges = all_edges
    if order != names:
        raise SystemExit(
            "acdc-sample: auto-circuit reordered the edges; the comparison needs one order"
        )
    kept = [n for n in names if by_name[n].prune_score(ps) == float("inf")]
    return {"seconds": seconds, "trial_s": trial_s, "kl": kl, "order": order, "kept": kept}


def _acdc_state_cost(model, loader, spec: dict) -> dict:
    """One ACDC trial of theirs (their patched forward from a start layer, set up as their
    ``acdc_prune_scores`` sets it up) timed with every edge kept and with a fraction of every
    later destination's masks set to patch (removed), at random: whether their trial's cost
    depends on the circuit's state. ``spec["state_starts"]``, ``spec["state_fractions"]``."""
    from auto_circuit.utils.ablation_activations import src_ablations
    from auto_circuit.utils.graph_utils import patch_mode, set_all_masks

    batch = next(iter(loader))
    patch_outs = src_ablations(model, batch.corrupt)
    src_outs = src_ablations(model, batch.clean)
    with t.inference_mode():
        _, toks, short_embd, attn_mask = model.input_to_embed(batch.clean)
        _, cache = model.run_with_cache(batch.clean)
        resids = [cache[f"blocks.{i}.hook_resid_pre"].clone() for i in range(model.cfg.n_layers)]
        del cache
    n_layers = model.cfg.n_layers

    def dest_layer(w) -> int:  # the block a destination reads in; the logits after the last
        return (
            n_layers if w.module_name.endswith("resid_post") else int(w.module_name.split(".")[1])
        )

    gen = t.Generator().manual_seed(0)
    rows = []
    with patch_mode(model, patch_outs, curr_src_outs=src_outs):
        for start in spec["state_starts"]:
            row = {"start_layer": int(start)}
            for frac in [0.0, *spec["state_fractions"]]:
                set_all_masks(model, val=0.0)
                for w in model.wrappers:
                    if w.is_dest and dest_layer(w) > start:
                        drop = (t.rand(w.patch_mask.shape, generator=gen) < frac).float()
                        w.patch_mask.data.copy_(drop)

                def trial(start=start):
                    with t.inference_mode():
                        return model(
                            resids[start],
                            start_at_layer=start,
                            tokens=toks,
                            shortformer_pos_embed=short_embd,
                            attention_mask=attn_mask,
                        )

                key = "kept_s" if frac == 0.0 else f"removed_{frac:g}_s"
                reps = int(spec.get("state_repeat", 2))
                row[key] = _median_time(trial, reps, warmup=frac == 0.0)[0]
            rows.append(row)
    set_all_masks(model, val=0.0)
    return {"rows": rows}


def _scores(model, prune_scores) -> dict[str, float]:
    return {e.name: float(e.prune_score(prune_scores)) for e in model.edges}


def run_model(d: Path, spec: dict) -> dict:
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.utils.ablation_activations import src_ablations
    from auto_circuit.utils.graph_utils import patch_mode, patchable_model, set_all_masks
    from auto_circuit.utils.tensor_ops import batch_avg_answer_diff

    tl_model, parity = _tl_model(d)
    toks = load_file(str(d / "tokens.safetensors"))
    n, T = toks["clean"].shape
    ds = PromptDataset(
        list(toks["clean"]),
        list(toks["corrupted"]),
        [a.view(1) for a in toks["answer"]],
        [w.view(1) for w in toks["wrong"]],
    )
    loader = PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=n, shuffle=False)
    res: dict = {"tl_vs_hf_max_abs_logit_diff": parity, "n": int(n), "tokens": int(T)}

    start = time.perf_counter()
    model = patchable_model(
        tl_model,
        factorized=True,
        slice_output="last_seq",
        separate_qkv=True,
        device=t.device("cpu"),
    )
    res["patchable_model_s"] = time.perf_counter() - start
    res["n_edges"] = len(model.edges)
    repeat = int(spec.get("repeat", 1))
    batch = next(iter(loader))

    def forward():
        with t.no_grad():
            return model(batch.clean)

    res["patchable_forward_s"] = _median_time(forward, repeat)[0]

    for name in spec.get("methods", []):
        if name == "eap":
            fn = lambda: mask_gradient_prune_scores(  # noqa: E731
                model, loader, None, grad_function="logit", answer_function="avg_diff", mask_val=0.0
            )
            reps = repeat
        elif name == "eap-ig":
            steps = int(spec.get("ig_steps", 5))
            fn = lambda: mask_gradient_prune_scores(  # noqa: E731
                model,
                loader,
                None,
                grad_function="logit",
                answer_function="avg_diff",
                integrated_grad_samples=steps,  # noqa: B023 (called in this iteration)
            )
            reps = max(1, repeat - 2)
        elif name == "acdc":
            tau = float(spec.get("acdc_tau", 1e-3))
            exp = round(__import__("math").log10(tau))
            fn = lambda: acdc_prune_scores(  # noqa: E731
                model,
                loader,
                None,
                tao_exps=[exp],  # noqa: B023
                tao_bases=[1],
            )
            reps = 0
        elif name == "acdc-sample":
            res[name] = _acdc_sample(model, loader, spec)
            set_all_masks(model, val=0.0)
            continue
        elif name == "acdc-state-cost":
            res[name] = _acdc_state_cost(model, loader, spec)
            continue
        elif name == "exact":
            fn = None
        else:
            continue
        if name == "exact":
            # One patched forward per edge (auto-circuit has no batched exact patching):
            # metric(edge ablated) - metric(clean), logit difference averaged over prompts.
            want = spec.get("exact_edges")  # None: every edge
            edges = list(model.edges)
            if want is not None:
                step = max(1, len(edges) // int(want))
                edges = edges[::step][: int(want)]
            patch = src_ablations(model, batch.corrupt)
            scores, per_edge = {}, []
            set_all_masks(model, val=0.0)
            with patch_mode(model, patch), t.no_grad():
                clean = batch_avg_answer_diff(model(batch.clean)[model.out_slice], batch).item()
                for e in edges:
                    e.patch_mask(model).data[e.patch_idx] = 1.0
                    s0 = time.perf_counter()
                    val = batch_avg_answer_diff(model(batch.clean)[model.out_slice], batch).item()
                    per_edge.append(time.perf_counter() - s0)
                    e.patch_mask(model).data[e.patch_idx] = 0.0
                    scores[e.name] = val - clean
            set_all_masks(model, val=0.0)
            res["exact"] = {
                "per_edge_s": statistics.median(per_edge),
                "edges_timed": len(edges),
                "all_edges": want is None,
                "scores": scores,
            }
            continue
        if reps == 0:
            s0 = time.perf_counter()
            ps = fn()
            sec, runs = time.perf_counter() - s0, [time.perf_counter() - s0]
        else:
            # EAP-IG runs EAP's code path, already warm: no extra warm-up run for it.
            sec, runs, ps = _median_time(fn, reps, warmup=name != "eap-ig")
        set_all_masks(model, val=0.0)
        res[name] = {"seconds": sec, "runs": runs, "scores": _scores(model, ps)}
    return res


def main() -> None:
    work = Path(sys.argv[1])
    request = json.loads((work / "request.json").read_text())
    t.set_num_threads(int(request.get("threads", t.get_num_threads())))
    import auto_circuit
    import transformer_lens
    import transformers

    out = {
        "versions": {
            "auto_circuit": getattr(auto_circuit, "__version__", None)
            or __import__("importlib.metadata").metadata.version("auto-circuit"),
            "transformer_lens": __import__("importlib.metadata").metadata.version(
                "transformer-lens"
            ),
            "transformers": transformers.__version__,
            "torch": t.__version__,
        },
        "models": {},
    }
    del transformer_lens
    for name, spec in request["models"].items():
        out["models"][name] = run_model(work / name, spec)
        (work / "result.json").write_text(json.dumps(out))
    (work / "result.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
