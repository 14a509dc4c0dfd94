"""The inspection subcommands: ``circuitfind lens | dla | attention | probe | sae | steer |
attribute``. Each takes ``--model SRC`` (hub name, local dir or ``zoo:NAME``), prints a table
(or JSON with ``--json``) and writes a plot with ``--plot FILE.{png,svg,pdf}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitfind.errors import InputError

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = ["register"]


# ----------------------------------------------------------------------------- shared
def _common(p: argparse.ArgumentParser, *, prompt: bool = True) -> None:
    p.add_argument("--model", required=True, help="hub name, local directory or zoo:NAME")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    if prompt:
        p.add_argument(
            "--prompt", action="append", default=None, help="prompt text (repeat for a batch)"
        )
        p.add_argument(
            "--tokens", default=None, help="token ids instead of text: '5,8,13' (';' between rows)"
        )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a plot (.png/.svg/.pdf)")


def _load(args: argparse.Namespace) -> Model:
    from circuitfind.cli import quiet_third_party
    from circuitfind.loading import load

    quiet_third_party(getattr(args, "verbose", False) or getattr(args, "debug", False))

    return load(args.model, device=args.device, dtype=args.dtype)


def _tokens(model: Model, args: argparse.Namespace, *, required: bool = True) -> Any:
    if getattr(args, "tokens", None):
        rows = [[int(t) for t in row.split(",") if t.strip()] for row in args.tokens.split(";")]
        if len({len(r) for r in rows}) != 1:
            raise InputError("--tokens rows must have equal lengths")
        import torch

        return torch.tensor(rows)
    if getattr(args, "prompt", None):
        _warn_unknown(model, args.prompt, args, "--prompt")
        return args.prompt if len(args.prompt) > 1 else args.prompt[0]
    if required:
        raise InputError("give --prompt TEXT (or --tokens IDS for a model without tokenizer)")
    return None


def _answer(value: str | None) -> Any:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _decode(model: Model, ids: Any) -> list[str]:
    ids = [int(i) for i in ids]
    if model.tokenizer is None:
        return [str(i) for i in ids]
    return [model.tokenizer.decode([i]) for i in ids]


def _lines(
    path: str, model: Model | None = None, args: argparse.Namespace | None = None
) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"file {path} does not exist")
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if model is not None and args is not None:
        _warn_unknown(model, lines, args, path)
    return lines


def unknown_tokens(model: Model, texts: list[str]) -> tuple[int, int, list[str]]:
    """How many of the texts' tokens are the tokenizer's unknown token: (unknown, total, the
    pieces of text that became it, where the tokenizer gives offsets)."""
    tok = model.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    if tok is None or unk is None:
        return 0, 0, []
    n_unknown = total = 0
    pieces: list[str] = []
    for text in texts:
        try:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError):  # slow tokenizers: no offsets
            enc = tok(text, add_special_tokens=False)
        ids = list(enc["input_ids"])
        offsets = enc.get("offset_mapping")
        total += len(ids)
        for k, i in enumerate(ids):
            if i == unk:
                n_unknown += 1
                if offsets is not None:
                    start, end = offsets[k]
                    pieces.append(text[start:end])
    return n_unknown, total, pieces


def _warn_unknown(model: Model, texts: list[str], args: argparse.Namespace, where: str) -> None:
    """Warn (one line on stderr) and count when text falls back to the unknown token."""
    n, total, pieces = unknown_tokens(model, texts)
    args.unknown_tokens = getattr(args, "unknown_tokens", 0) + n
    if not n:
        return
    tok = model.tokenizer
    shown = ", ".join(repr(p) for p in list(dict.fromkeys(pieces))[:8])
    special = set(getattr(tok, "all_special_tokens", []) or [])
    vocab = (
        sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if hasattr(tok, "get_vocab") else []
    )
    examples = [w for w, _ in vocab if w not in special][:5]
    hint = f", e.g. {', '.join(repr(w) for w in examples)}" if examples else ""
    print(
        f"warning: {n} of {total} tokens of {where} are unknown to the tokenizer and became "
        f"{getattr(tok, 'unk_token', '<unk>')!r}"
        + (f" ({shown})" if shown else "")
        + f"; results at those positions mean nothing: use words of the model's vocabulary{hint}",
        file=sys.stderr,
    )


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "unknown_tokens", None) is not None:
        data = {**data, "unknown_tokens": args.unknown_tokens}
    print(json.dumps(data) if args.json else text)


# ----------------------------------------------------------------------------- lens
def _lens(args: argparse.Namespace) -> int:
    from circuitfind.inspect._common import as_tokens
    from circuitfind.inspect.lens import TunedLens, lens_kl, logit_lens, train_tuned_lens

    model = _load(args)
    lens = None
    if args.train_tuned:
        corpus = _lines(args.corpus, model, args) if args.corpus else None
        if corpus is None:
            raise InputError("--train-tuned needs --corpus FILE (one text a line)")
        ids, _ = as_tokens(model, corpus)
        lens = train_tuned_lens(model, ids, epochs=args.epochs, progress=True)
        lens.save(args.train_tuned)
    elif args.tuned:
        lens = TunedLens.load(args.tuned).to(model.device)
    ids, mask = as_tokens(model, _tokens(model, args))
    logp = logit_lens(model, ids, mask, lens=lens)[:, 0]  # first prompt: [layer, pos, vocab]
    kl = lens_kl(model, ids, mask, lens=lens).tolist()
    words = _decode(model, ids[0])
    top = [_decode(model, row.argmax(-1)) for row in logp]
    names = [f"L{i}" for i in range(model.cfg.n_layers)] + ["out"]
    data = {
        "tokens": words,
        "layers": [
            {"layer": n, "top": t, "kl": k, "p_top": row.exp().amax(-1).tolist()}
            for n, t, k, row in zip(names, top, kl, logp)
        ],
        "tuned": lens is not None,
    }
    width = max(8, *(len(w) for w in words))
    text = "\n".join(
        [f"{'':>5} {'KL':>7}  " + " ".join(f"{w[:width]:>{width}}" for w in words)]
        + [
            f"{n:>5} {k:7.3f}  " + " ".join(f"{w[:width]:>{width}}" for w in t)
            for n, k, t in zip(names, kl, top)
        ]
    )
    if args.plot:
        from circuitfind.inspect.plots import plot_lens

        plot_lens(logp, words, top, args.plot)
    _emit(args, data, text)
    return 0


# ----------------------------------------------------------------------------- dla
def _dla(args: argparse.Namespace) -> int:
    from circuitfind.inspect.dla import dla

    model = _load(args)
    parts = dla(model, _tokens(model, args), _answer(args.answer), _answer(args.wrong))
    means = {k: float(v.mean()) for k, v in parts.items()}
    total = sum(means.values())
    ranked = sorted(means.items(), key=lambda kv: -abs(kv[1]))
    shown = ranked[: args.top]
    text = "\n".join(
        [f"{'node':>10} {'contribution':>13}"]
        + [f"{k:>10} {v:13.4f}" for k, v in shown]
        + [f"{'total':>10} {total:13.4f}  (= the model's logit{' diff' if args.wrong else ''})"]
    )
    if args.plot:
        from circuitfind.inspect.plots import plot_dla

        plot_dla(means, args.plot, top=args.top)
    _emit(args, {"contributions": means, "total": total}, text)
    return 0


# ----------------------------------------------------------------------------- attention
def _attention(args: argparse.Namespace) -> int:
    from circuitfind.inspect._common import as_tokens
    from circuitfind.inspect.attention import attention_patterns, head_pattern_scores, head_roles

    model = _load(args)
    tokens = _tokens(model, args, required=False)
    scores = head_pattern_scores(model, tokens, n=args.n, seq_len=args.seq_len, seed=args.seed)
    roles = head_roles(scores)
    data = {"scores": {k: v.tolist() for k, v in scores.items()}, "roles": roles}
    short = {"previous-token": "prev-token", "duplicate-token": "duplicate"}
    header = f"{'head':>6} " + " ".join(f"{short.get(r, r):>12}" for r in scores) + "  role"
    rows = [header]
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            vals = " ".join(f"{float(s[layer, h]):12.3f}" for s in scores.values())
            rows.append(f"{f'L{layer}H{h}':>6} {vals}  {roles.get(f'a{layer}.h{h}', '')}")
    if args.plot:
        from circuitfind.inspect import plots

        if tokens is not None:
            ids, mask = as_tokens(model, tokens)
            pats = attention_patterns(model, ids, mask)[:, 0]
            plots.plot_attention_grid(pats, _decode(model, ids[0]), args.plot)
        else:
            plots.plot_head_scores(scores, args.plot)
    _emit(args, data, "\n".join(rows))
    return 0


# ----------------------------------------------------------------------------- probe
def _probe(args: argparse.Namespace) -> int:
    from circuitfind.inspect.probe import load_labelled, train_probes

    model = _load(args)
    texts, labels = load_labelled(args.data)
    sites = args.site or None
    res = train_probes(model, texts, labels, sites=sites, test_fraction=args.test_fraction)
    text = "\n".join(
        [f"{'site':>14} {'train':>7} {'held-out':>9}"]
        + [f"{s:>14} {res.train_accuracy[s]:7.3f} {res.test_accuracy[s]:9.3f}" for s in res.sites]
        + [f"majority-class accuracy {res.chance:.3f}; best site {res.best_site()}"]
    )
    if args.save_directions:
        from safetensors.torch import save_file

        save_file({s: d.contiguous() for s, d in res.directions.items()}, str(args.save_directions))
    if args.plot:
        from circuitfind.inspect.plots import plot_probe

        plot_probe(res.test_accuracy, args.plot, chance=res.chance)
    _emit(args, res.to_dict(), text)
    return 0


# ----------------------------------------------------------------------------- sae
def _sae(args: argparse.Namespace) -> int:
    import torch

    from circuitfind.inspect.sae import (
        SAE,
        SAEConfig,
        evaluate_sae,
        evaluation_data,
        format_metrics,
        site_activations,
        splice_metrics,
        top_activations,
        train_sae,
    )

    model = _load(args)
    texts = _lines(args.data, model, args) if args.data else None
    ev = evaluation_data(
        model, task=args.task, texts=texts, n=args.random, seed=0, allow_random=True
    )
    ids, mask = ev.tokens, ev.attention_mask
    acts = torch.cat(list(site_activations(model, ids, args.site, attention_mask=mask)))
    if args.load:
        sae = SAE.load(args.load)
    else:
        cfg = SAEConfig(
            d_in=acts.shape[-1],
            d_sae=args.d_sae or 4 * acts.shape[-1],
            architecture=args.arch,
            k=args.k,
            l1_coefficient=args.l1,
            hook_name=args.site,
            model_name=args.model,
        )
        sae = train_sae(acts, cfg, steps=args.steps, batch_size=args.batch_size, progress=True)
    metrics: dict[str, Any] = evaluate_sae(sae, acts)
    metrics.update(
        splice_metrics(
            model,
            sae,
            ids,
            args.site,
            attention_mask=mask,
            loss_weight=ev.loss_weight,
            progress=True,
        )
    )
    data: dict[str, Any] = {"metrics": metrics, "data": ev.source}
    if args.out:
        data["saved"] = str(sae.save(args.out))
    if args.feature is not None:
        data["feature"] = top_activations(model, sae, ids, args.site, args.feature, k=10)
    text = f"data: {ev.source}\n" + format_metrics(metrics)
    if "feature" in data:
        text += f"\nfeature {args.feature} top activations:\n" + "\n".join(
            f"  {r['activation']:8.3f}  {r['context']!r}" for r in data["feature"]
        )
    if args.plot:
        from circuitfind.inspect.plots import _plt, _save

        plt = _plt()
        with torch.no_grad():
            freq = (sae.encode(acts) > 0).float().mean(0).clamp(min=1e-6)
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(freq.log10().numpy(), bins=40)
        ax.set_xlabel("log10 feature firing frequency")
        ax.set_ylabel("features")
        _save(fig, args.plot)
    _emit(args, data, text)
    return 0


# ----------------------------------------------------------------------------- steer
def _steer(args: argparse.Namespace) -> int:
    from circuitfind.inspect import steer

    model = _load(args)
    if args.vector:
        from safetensors.torch import load_file

        vecs = load_file(args.vector)
        key = args.vector_key or next(iter(vecs))
        if key not in vecs:
            raise InputError(f"{args.vector} has no vector {key!r}; it has {sorted(vecs)}")
        vector = vecs[key].reshape(-1, model.cfg.d_model)[0]
    elif args.positive and args.negative:
        vector = steer.steering_vector(
            model,
            _lines(args.positive, model, args),
            _lines(args.negative, model, args),
            layer=args.layer,
        )
    else:
        raise InputError("give --positive FILE and --negative FILE, or --vector FILE")
    data: dict[str, Any] = {"layer": args.layer, "norm": float(vector.norm())}
    lines = []
    if args.orthogonalize_out:
        steer.orthogonalize_weights(model, vector, args.orthogonalize_out)
        data["saved"] = args.orthogonalize_out
        lines.append(f"orthogonalized weights saved to {args.orthogonalize_out}")
    prompt = _tokens(model, args, required=not args.orthogonalize_out)
    if prompt is not None:
        if args.ablate:
            plain = steer.generate(model, prompt, max_new_tokens=args.max_new_tokens)
            with steer.directional_ablation(model, vector):
                abl = steer.generate(model, prompt, max_new_tokens=args.max_new_tokens)
            n = len(plain[0]) - args.max_new_tokens
            gens: dict[str, Any] = {
                "plain": _decode(model, plain[0, n:]),
                "ablated": _decode(model, abl[0, n:]),
            }
        else:
            coeffs = [0.0, *(args.coeff or [4.0])]
            out = steer.compare_generations(
                model, prompt, vector, layer=args.layer, coeffs=coeffs,
                max_new_tokens=args.max_new_tokens,
            )  # fmt: skip
            gens = {f"coeff {c:g}": v for c, v in out.items()}
        data["generations"] = {
            k: v if isinstance(v, str) else "".join(map(str, v)) for k, v in gens.items()
        }
        lines += [f"{k:>12}: {v}" for k, v in data["generations"].items()]
    _emit(args, data, "\n".join(lines))
    return 0


# ----------------------------------------------------------------------------- attribute
def _attribute(args: argparse.Namespace) -> int:
    from circuitfind.inspect._common import as_tokens
    from circuitfind.inspect.attribute import attribute, attribution_summary, baseline_token

    model = _load(args)
    ids, mask = as_tokens(model, _tokens(model, args))
    answer, wrong = _answer(args.answer), _answer(args.wrong)
    baseline = _baseline_arg(model, args.baseline)
    scores = attribute(
        model, ids, answer, wrong, method=args.method, attention_mask=mask, steps=args.steps,
        baseline=baseline,
    )  # fmt: skip
    words = _decode(model, ids[0])
    data: dict[str, Any] = {"tokens": words, "scores": scores[0].tolist(), "method": args.method}
    lines = [f"{w!r:>16} {s:+9.4f}" for w, s in zip(words, scores[0].tolist())]
    if args.method != "rollout" and answer is not None:
        summary = attribution_summary(
            model, ids, scores, answer, wrong, method=args.method, attention_mask=mask,
            baseline=baseline,
        )[0]  # fmt: skip
        data["summary"] = summary
        lines += _summary_lines(model, args, summary, baseline_token(model, baseline))
    if args.plot:
        from circuitfind.inspect.plots import plot_attribution

        plot_attribution(words, scores[0], args.plot)
    _emit(args, data, "\n".join(lines))
    return 0


def _summary_lines(
    model: Model, args: argparse.Namespace, summary: dict[str, Any], baseline: Any
) -> list[str]:
    """f(input), f(baseline) and the scores' sum, so completeness reads at a glance."""
    what = "logit(answer)" + (" - logit(wrong)" if args.wrong is not None else "")
    out = [f"{'f(input)':>16} {summary['f_input']:+9.4f}  ({what} at the last position)"]
    if summary["f_baseline"] is not None:
        name = "the zero vector" if baseline == "zero" else (
            f"token {baseline}" + (f" {_decode(model, [baseline])[0]!r}" if model.tokenizer else "")
        )  # fmt: skip
        out.append(
            f"{'f(baseline)':>16} {summary['f_baseline']:+9.4f}  (every token's embedding "
            f"replaced by that of {name})"
        )
    line = f"{'sum':>16} {summary['sum']:+9.4f}"
    if summary["expected"] is not None:
        line += (
            f"  (complete: should equal f(input) - f(baseline) = {summary['expected']:+.4f}; "
            f"gap {summary['gap']:+.4f}"
            + (f", {args.steps} steps" if args.method == "integrated_gradients" else "")
            + ")"
        )
    elif args.method in ("occlusion", "gradient", "grad_x_input"):
        line += "  (this method's scores need not sum to f(input) - f(baseline))"
    out.append(line)
    expected, gap = summary["expected"], summary["gap"]
    if expected is not None and abs(gap) > 0.05 * abs(expected) + 1e-6:
        if (summary.get("baseline_norm") or 0.0) < 1e-6:
            out.append(
                "note: the baseline's embedding is zero, where the model's norms are singular, "
                "so the path integral converges slowly: choose another --baseline (a token id "
                "or text) or raise --steps"
            )
        else:
            out.append("note: the gap is more than 5%: raise --steps")
    return out


def _baseline_arg(model: Model, value: str | None) -> str | int | None:
    """--baseline as attribute() takes it: None, "zero", or a token id (from an id or text)."""
    if value is None or value == "zero":
        return value
    if value.lstrip("-").isdigit():
        return int(value)
    from circuitfind.inspect._common import token_ids

    return int(token_ids(model, value, 1)[0])


# ----------------------------------------------------------------------------- wiring
def register(sub: Any) -> None:
    """Add the inspection subcommands to the ``circuitfind`` parser's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "lens",
        help="logit lens / tuned lens: each layer's next-token guess",
        description="Read the residual stream before each layer through the final norm and "
        "unembedding (logit lens), or through trained per-layer translators (tuned lens). "
        "Prints the top token at each position per layer, and the KL to the final layer.\n\n"
        "  circuitfind lens --model zoo:induction-2l --prompt 't1 t2 t3 t1 t2' --plot lens.png\n"
        "  circuitfind lens --model M --train-tuned lens/ --corpus texts.txt --prompt '...'",
        formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--tuned", metavar="DIR", help="use a tuned lens saved in DIR")
    p.add_argument("--train-tuned", metavar="DIR", help="train a tuned lens and save it to DIR")
    p.add_argument("--corpus", metavar="FILE", help="training texts for --train-tuned")
    p.add_argument("--epochs", type=int, default=3)
    p.set_defaults(func=_lens)

    p = sub.add_parser(
        "dla",
        help="direct logit attribution of every head and MLP",
        description="Each node's direct contribution to logit(answer) − logit(wrong) at the last "
        "position, with the final norm's scale frozen; contributions plus 'bias' sum to the "
        "model's logit difference.\n\n"
        "  circuitfind dla --model zoo:ioi --prompt '...' --answer ' Mary' --wrong ' John'",
        formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--answer", required=True, help="answer token (text or id)")
    p.add_argument("--wrong", default=None, help="contrasting token (text or id)")
    p.add_argument("--top", type=int, default=15, help="rows to show")
    p.set_defaults(func=_dla)

    p = sub.add_parser(
        "attention",
        help="per-head previous-token / duplicate / induction / copying scores",
        description="Score every head on repeated random tokens (or your prompt) and name its "
        "role. --plot draws the patterns of the prompt, or the score heatmaps without one.",
        formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--n", type=int, default=16, help="random sequences (without --prompt)")
    p.add_argument("--seq-len", type=int, default=20, help="length of each random half")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_attention)

    p = sub.add_parser(
        "probe",
        help="linear probes per layer on a labelled prompt set",
        description="Train a logistic-regression probe on each layer's residual stream (or "
        "given sites) at the last token, report held-out accuracy, optionally save the probe "
        "directions for `circuitfind steer --vector`.\n\n"
        '  data.jsonl: {"text": "...", "label": "positive"} one a line',
        formatter_class=fmt,
    )
    _common(p, prompt=False)
    p.add_argument("--data", required=True, metavar="FILE.jsonl")
    p.add_argument("--site", action="append", help="resid_pre.L, resid_final, a1.h2, m0 ...")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--save-directions", metavar="FILE.safetensors")
    p.set_defaults(func=_probe)

    p = sub.add_parser(
        "sae",
        help="train / evaluate a sparse autoencoder on a site's activations",
        description="Train a ReLU+L1 or TopK SAE on the activations at a site (resid_pre.L, "
        "mlp_out.L, m0, a1.h2, ...), report MSE, explained variance, L0, dead features and the "
        "loss with the reconstruction spliced in; save in SAELens's layout.",
        formatter_class=fmt,
    )
    _common(p, prompt=False)
    p.add_argument("--site", required=True)
    p.add_argument(
        "--data",
        metavar="FILE",
        help="texts, one a line (default: --task's prompts; else a zoo model's training "
        "generator; else random tokens, with a warning)",
    )
    p.add_argument("--task", metavar="NAME", help="train and evaluate on this task's prompts")
    p.add_argument(
        "--random",
        type=int,
        default=256,
        help="prompts of --task, sequences of a zoo model's generator, or random sequences",
    )
    p.add_argument("--arch", choices=["standard", "topk"], default="topk")
    p.add_argument("--d-sae", type=int, default=None, help="features (default 4 × d_in)")
    p.add_argument("--k", type=int, default=16, help="TopK's k")
    p.add_argument("--l1", type=float, default=1e-3, help="ReLU SAE's L1 coefficient")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--out", metavar="DIR", help="save sae_weights.safetensors + cfg.json")
    p.add_argument("--load", metavar="DIR", help="evaluate a saved SAE instead of training")
    p.add_argument("--feature", type=int, default=None, help="show a feature's top activations")
    p.set_defaults(func=_sae)

    p = sub.add_parser(
        "steer",
        help="steering vectors, directional ablation, weight orthogonalization",
        description="Build a steering vector (difference of means of contrastive prompt files, "
        "or a saved probe direction), then generate with and without it side by side; or "
        "project it out (--ablate), or out of the weights and save a HF model "
        "(--orthogonalize-out DIR).",
        formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--layer", type=int, default=0, help="layer whose resid_pre is steered")
    p.add_argument("--positive", metavar="FILE", help="prompts, one a line")
    p.add_argument("--negative", metavar="FILE", help="prompts, one a line")
    p.add_argument("--vector", metavar="FILE.safetensors", help="e.g. from probe")
    p.add_argument("--vector-key", help="which vector in --vector (default: the first)")
    p.add_argument("--coeff", type=float, action="append", default=None, help="repeatable")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--ablate", action="store_true", help="directional ablation instead")
    p.add_argument("--orthogonalize-out", metavar="DIR")
    p.set_defaults(func=_steer)

    p = sub.add_parser(
        "attribute",
        help="per-token input attribution (integrated gradients, ...)",
        description="Attribute logit(answer) − logit(wrong) at the last position to the input "
        "tokens.",
        formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--answer", default=None, help="answer token (text or id)")
    p.add_argument("--wrong", default=None)
    p.add_argument(
        "--method",
        default="integrated_gradients",
        choices=[
            "gradient",
            "grad_x_input",
            "integrated_gradients",
            "occlusion",
            "rollout",
            "shap",
        ],
    )
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    p.add_argument(
        "--baseline",
        help="what stands in for every token (integrated_gradients, occlusion, shap): a token "
        "id or text, or zero (when not given: the pad, else end-of-text token)",
    )
    p.set_defaults(func=_attribute)
