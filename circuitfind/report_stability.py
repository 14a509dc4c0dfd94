"""The report's stability, ensemble and certification sections (HTML), from a circuit's meta:
bootstrap intervals and inclusion frequencies (core / contingent), per-edge agreement across
methods, the patched faithfulness and attribution-vs-exact agreement near the cut."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["stability_sections"]

MAX_ROWS = 30


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return html.escape(str(x))


def _stability(meta: dict[str, Any], kept: set[str]) -> str:
    st = meta.get("stability")
    if not st:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td class='num'>{_f(v.get('value'))}</td>"
        f"<td class='num'>[{_f(v.get('low'))}, {_f(v.get('high'))}]</td>"
        f"<td class='num'>{_f(v.get('mean'))}</td>"
        f"<td class='num'>{_f(v.get('stderr'))}</td><td class='num'>{v.get('n')}</td></tr>"
        for k, v in st["intervals"].items()
    )
    freq = st["frequency"]
    ranked = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_ROWS]
    edge_rows = "".join(
        f"<tr><td><code>{html.escape(e)}</code></td><td class='num'>{f:.2f}</td>"
        f"<td>{'core' if f >= st['core_threshold'] else 'contingent'}</td>"
        f"<td>{'yes' if e in kept else 'no'}</td></tr>"
        for e, f in ranked
    )
    share = st.get("circuit_core_share")
    more = len(freq) - len(ranked)
    tail = f"<p class='summary'>{more} more edges kept in some resample (circuit.json).</p>"
    return f"""<h2>Stability</h2>
<p class="summary" id="stability-summary">{st["n_boot"]} bootstrap resamples of the
{st["n_prompts"]} prompts (seed {st["seed"]}; {html.escape(st["how"])}), each re-scored,
re-pruned by the same rule ({html.escape(str(st["rule"].get("rule")))}) and re-measured on its
own prompts. <b>{len(st["core"])}</b> core edges (kept in at least
{st["core_threshold"]:.0%} of resamples), <b>{len(st["contingent"])}</b> contingent;
{"" if share is None else f"{share:.0%} of this circuit's edges are core. "}Intervals are the
2.5–97.5 percentiles of the resamples (coarse with few resamples; each resample picks and
measures its circuit on its own prompts, so they can be optimistic: compare their mean with this
circuit's value); the diagram's edge opacity is
the inclusion frequency.</p>
<table id="stability-intervals"><tr><th>quantity</th><th>this circuit</th>
<th>95% interval</th><th>resample mean</th><th>SE</th><th>resamples</th></tr>{rows}</table>
<table id="stability-edges"><tr><th>edge</th><th>inclusion frequency</th><th>core?</th>
<th>in this circuit</th></tr>{edge_rows}</table>
{tail if more > 0 else ""}
"""


def _ensemble(meta: dict[str, Any]) -> str:
    ens = meta.get("ensemble")
    if not ens:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td class='num'>{v.get('n_edges')}</td>"
        f"<td class='num'>{_f(v.get('faithfulness'))} ± {_f(v.get('faithfulness_stderr'))}</td>"
        f"<td class='num'>{_f(v.get('time_s'), 2)}</td></tr>"
        for m, v in ens["per_method"].items()
    )
    pairs = ", ".join(
        f"{html.escape(k.replace('|', ' / '))} {v:.2f}" for k, v in ens["jaccard"].items()
    )
    return f"""<h2>Agreement across methods</h2>
<p class="summary" id="ensemble-summary"><b>{len(ens["all_agree"])}</b> edges kept by every one of
{html.escape(", ".join(ens["methods"]))} (same prepared runs, same pruning rule). Jaccard
overlap: {pairs or "–"}.</p>
<table id="ensemble"><tr><th>method</th><th>edges</th><th>faithfulness ± SE</th>
<th>time (s)</th></tr>{rows}</table>
"""


def _certify(meta: dict[str, Any]) -> str:
    cert = meta.get("certify")
    if not cert:
        return ""
    v, fr = cert["verified"], cert["frontier"]
    ci = v.get("ci") or [None, None]
    rows = "".join(
        f"<tr><td><code>{html.escape(d['edge'])}</code></td><td class='num'>"
        f"{d['attribution']:.4g}</td><td class='num'>{d['exact']:.4g}</td>"
        f"<td class='num'>{d['rank_attribution']}</td><td class='num'>{d['rank_exact']}</td>"
        f"<td>{'yes' if d['in_circuit'] else 'no'}</td></tr>"
        for d in fr.get("disagree") or []
    )
    target = (
        ""
        if v.get("target") is None
        else (f"; target {v['target']}: {'met' if v.get('meets_target') else 'NOT met'}")
    )
    return f"""<h2>Certification</h2>
<p class="summary" id="certify-summary">Scores: <b>{html.escape(cert["attribution_method"])}</b>;
mask step: <b>{html.escape(str(cert["mask_method"] or "none"))}</b>. Faithfulness verified by
patching ({html.escape(v["by"])}): <b>{_f(v.get("faithfulness"))} ± {_f(v.get("stderr"))}</b>
(95% interval [{_f(ci[0])}, {_f(ci[1])}], {v.get("n_prompts")} prompts, reliable:
{_f(v.get("reliable"))}){target}.</p>
<p class="summary" id="frontier-summary">Frontier: the {fr["n"]} edges ranked
{fr["ranks"][0]}–{fr["ranks"][1]} by |attribution| around the cut at {fr["cut_rank"]}, each
patched alone. Spearman(attribution, exact) = <b>{_f(fr.get("spearman"), 2)}</b>
(p = {_f(fr.get("spearman_p"), 3)}, n = {fr["n"]}); by magnitude
{_f(fr.get("spearman_abs"), 2)}; exact patching puts {_f(fr.get("same_side_of_cut"), 2)} of them
on the same side of the cut.</p>
<table id="frontier"><tr><th>edge (largest rank disagreement)</th><th>attribution</th>
<th>exact</th><th>rank (attribution)</th><th>rank (exact)</th><th>in circuit</th></tr>{rows}</table>
{_selection(cert)}"""


def _selection(cert: dict[str, Any]) -> str:
    """The candidate rankings the certified pipeline compared, each with its patched CPR."""
    cands = cert.get("candidates") or []
    if len(cands) < 2:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(c['label'])}{' (chosen)' if c['label'] == cert['chosen'] else ''}"
        f"</td><td class='num'>{_f(c.get('cpr'))} ± {_f(c.get('cpr_stderr'))}</td>"
        f"<td class='num'>{_f(c.get('cmd'))}</td>"
        f"<td class='num'>{_f(c.get('score_s'), 2)}</td></tr>"
        for c in cands
    )
    return f"""<p class="summary" id="selection-summary">Selection: the ranking with the
largest CPR (area under the faithfulness curve, each point measured by masked runs) was kept:
<b>{html.escape(cert["chosen"])}</b>. {html.escape(cert.get("selection", ""))}.</p>
<table id="selection"><tr><th>candidate ranking</th><th>CPR ± bootstrap error</th><th>CMD</th>
<th>scoring s</th></tr>{rows}</table>
"""


def stability_sections(meta: dict[str, Any], kept: set[str]) -> str:
    """The HTML of whichever of the three sections the meta has (empty when none)."""
    return _stability(meta, kept) + _ensemble(meta) + _certify(meta)
