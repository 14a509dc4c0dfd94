"""The discover summary's stability, ensemble and certification parts (JSON and human lines),
read from a circuit's ``meta`` (no torch)."""

from __future__ import annotations

from typing import Any

__all__ = ["resamples_arg", "stability_lines", "stability_summary"]


def stability_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap, ensemble and certification parts of the discover summary."""
    out: dict[str, Any] = {}
    st = meta.get("stability")
    if st:
        out["stability"] = {
            "n_boot": st["n_boot"],
            "core": len(st["core"]),
            "contingent": len(st["contingent"]),
            "circuit_core_share": st.get("circuit_core_share"),
            "intervals": st["intervals"],
        }
    ens = meta.get("ensemble")
    if ens:
        out["ensemble"] = {
            "methods": ens["methods"],
            "all_agree": len(ens["all_agree"]),
            "jaccard": ens["jaccard"],
            "per_method": ens["per_method"],
        }
    cert = meta.get("certify")
    if cert:
        f = cert["frontier"]
        out["certify"] = {
            "attribution_method": cert["attribution_method"],
            "mask_method": cert["mask_method"],
            "candidates": [
                {k: c.get(k) for k in ("label", "method", "cpr", "cpr_stderr")}
                for c in cert.get("candidates") or []
            ],
            "chosen": cert.get("chosen"),
            "verified": cert["verified"],
            "frontier": {
                k: f.get(k)
                for k in (
                    "n",
                    "spearman",
                    "spearman_p",
                    "spearman_abs",
                    "same_side_of_cut",
                    "disagree",
                )
            },
        }
    return out


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def stability_lines(summary: dict[str, Any]) -> list[str]:
    """Human lines for :func:`stability_summary`'s parts."""
    lines = []
    st = summary.get("stability")
    if st:
        f = st["intervals"].get("faithfulness", {})
        lines.append(
            f"stability ({st['n_boot']} resamples): {st['core']} core edges (kept in >= 90%), "
            f"{st['contingent']} contingent; faithfulness 95% interval "
            f"[{_num(f.get('low'))}, {_num(f.get('high'))}]"
            + (
                f" (out of bag [{_num(st['intervals']['faithfulness_oob']['low'])}, "
                f"{_num(st['intervals']['faithfulness_oob']['high'])}])"
                if "faithfulness_oob" in st["intervals"]
                else ""
            )
            + (
                f"; CPR [{_num(st['intervals']['cpr']['low'])}, "
                f"{_num(st['intervals']['cpr']['high'])}]"
                if "cpr" in st["intervals"]
                else ""
            )
        )
    ens = summary.get("ensemble")
    if ens:
        sizes = ", ".join(f"{m} {v['n_edges']}" for m, v in ens["per_method"].items())
        lines.append(
            f"ensemble: {ens['all_agree']} edges kept by all of {', '.join(ens['methods'])} "
            f"(edges: {sizes})"
        )
    cert = summary.get("certify")
    if cert:
        v, fr = cert["verified"], cert["frontier"]
        verdict = {True: "meets", False: "MISSES", None: "no target:"}[v["meets_target"]]
        target = f" target {v['target']}" if v["target"] is not None else ""
        lines.append(
            f"certified: faithfulness {_num(v['faithfulness'])} ± {_num(v['stderr'])} by "
            f"patching ({v['n_prompts']} prompts), {verdict}{target}; mask step: "
            f"{cert['mask_method'] or 'none'}"
        )
        cands = cert.get("candidates") or []
        if len(cands) > 1:
            lines.append(
                "selection by patched CPR: "
                + ", ".join(
                    f"{c['label']} {_num(c.get('cpr'))} ± {_num(c.get('cpr_stderr'))}"
                    for c in cands
                )
                + f"; kept {cert['chosen']}"
            )
        lines.append(
            f"frontier ({fr['n']} edges near the cut): Spearman(attribution, exact) "
            f"{_num(fr['spearman'], '.2f')} (p = {_num(fr['spearman_p'], '.2g')}), by magnitude "
            f"{_num(fr['spearman_abs'], '.2f')}"
        )
        for d in (fr.get("disagree") or [])[:3]:
            lines.append(
                f"  disagree: {d['edge']} attribution {d['attribution']:.3g} (rank "
                f"{d['rank_attribution']}) vs exact {d['exact']:.3g} (rank {d['rank_exact']})"
            )
    return lines


def resamples_arg(text: str) -> int | str:
    """``--bootstrap``'s type: ``auto`` or a whole number of resamples (0 = off, else >= 2)."""
    import argparse

    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a whole number") from None
    if value < 0 or value == 1:
        raise argparse.ArgumentTypeError(f"{value}: use 0 (off), auto, or 2 or more resamples")
    return value
