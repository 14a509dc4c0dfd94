// circuitfind feature-graph explorer: plain JavaScript, no libraries. Reads the JSON payload in
// #cf-data (circuitfind/features/explorer.py documents it) and draws a prompt's attribution graph:
// rows by layer (embeddings at the bottom, the target logit at the top), columns by token
// position. common.js (loaded first) gives the helpers, tooltip and pan / zoom.
"use strict";
(function () {
  const { el, fmt } = window.cfCommon;
  const D = window.cfCommon.data();
  const ROW = 90, MARGIN = 60, SLOT = 24, MIN_COL = 64, R = 8;
  const nodes = D.nodes;
  const byId = {};
  nodes.forEach((n, i) => { n.index = i; byId[n.id] = n; });
  const edges = D.edges.map(([s, t, w], i) => ({ i, s: nodes[s], t: nodes[t], w }));
  const state = { point: D.initial_point, node: null };
  const nRows = D.rows.length, T = D.tokens.length;
  const KIND = { feature: "feature", error: "error node", token: "embedding", logit: "target logit" };

  // ------------------------------------------------------------------ layout
  // A node sits in its row (layer) and its position's column; nodes sharing a cell sit side by
  // side, features first (most influential first), then the error node. A column is as wide as
  // its fullest cell at the current pruning.
  const rowY = (r) => MARGIN + (nRows - 1 - r) * ROW;
  let colLeft = [], colW = [];
  const colX = (pos) => colLeft[pos] + colW[pos] / 2;
  function layout(p) {
    const cells = {};
    p.nodes.forEach((i) => { const n = nodes[i]; const key = n.row + ":" + n.pos; (cells[key] = cells[key] || []).push(n); });
    const fullest = D.tokens.map(() => 1);
    for (const c of Object.values(cells)) fullest[c[0].pos] = Math.max(fullest[c[0].pos], c.length);
    colW = fullest.map((m) => Math.max(MIN_COL, m * SLOT + 16));
    colLeft = [];
    colW.reduce((x, w, pos) => { colLeft[pos] = x; return x + w; }, MARGIN);
    for (const c of Object.values(cells)) {
      c.sort((a, b) => (a.kind === "error") - (b.kind === "error") || b.influence - a.influence);
      c.forEach((n, j) => { n.x = colX(n.pos) + (j - (c.length - 1) / 2) * SLOT; n.y = rowY(n.row); });
    }
  }
  function shown() {
    const p = D.points[state.point];
    return { p, nodes: p.nodes.map((i) => nodes[i]), edges: p.edges.map((i) => edges[i]) };
  }

  // ------------------------------------------------------------------ diagram
  const svg = document.getElementById("diagram");
  const vp = el("g", { id: "viewport" });
  svg.appendChild(vp);
  function bounds() {
    return { x0: MARGIN - 110, x1: colLeft[T - 1] + colW[T - 1] + 20, y0: rowY(nRows - 1) - 40, y1: rowY(0) + 60 };
  }
  const pz = window.cfCommon.panZoom(svg, vp, bounds, () => select(null));
  const tip = window.cfCommon.tooltip(document.getElementById("tip"));

  function shape(n) {
    if (n.kind === "feature") return el("circle", { r: R });
    if (n.kind === "error") return el("polygon", { points: `0,${-R - 1} ${R + 1},0 0,${R + 1} ${-R - 1},0` });
    if (n.kind === "token") return el("rect", { x: -R - 2, y: -R, width: 2 * R + 4, height: 2 * R, rx: 3 });
    return el("rect", { x: -26, y: -R - 2, width: 52, height: 2 * R + 4, rx: 5 });
  }
  function edgePath(e) {
    const x1 = e.s.x, y1 = e.s.y - R, x2 = e.t.x, y2 = e.t.y + R, my = (y1 + y2) / 2;
    return `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`;
  }
  function draw() {
    const cur = shown();
    layout(cur.p);
    vp.textContent = "";
    const guides = el("g", { class: "guides" });
    D.rows.forEach((r, j) => guides.appendChild(el("text", { class: "rowlabel", x: MARGIN - 8, y: rowY(j) + 4, text: r.label })));
    const bottom = rowY(0) + 30;
    D.tokens.forEach((t, pos) => {
      const x = colX(pos);
      guides.appendChild(el("line", { class: "colline", x1: x, x2: x, y1: rowY(nRows - 1) - 20, y2: rowY(0) + 14 }));
      const lab = el("text", { class: "collabel" + (pos === D.target.pos ? " target" : ""), "data-col": String(pos), x, y: bottom, text: t });
      lab.appendChild(el("title", { text: "position " + pos + ": " + JSON.stringify(t) }));
      guides.appendChild(lab);
      guides.appendChild(el("text", { class: "colpos", x, y: bottom + 13, text: String(pos) }));
    });
    vp.appendChild(guides);
    const biggest = Math.max(1e-12, ...cur.edges.map((e) => Math.abs(e.w)));
    const sel = state.node;
    const eg = el("g", { class: "edges" });
    for (const e of cur.edges) {
      const touches = sel && (e.s.id === sel || e.t.id === sel);
      const path = el("path", {
        class: "edge" + (sel && !touches ? " faded" : "") + (touches ? " touching" : ""),
        d: edgePath(e), stroke: e.w >= 0 ? D.colours.positive : D.colours.negative,
        "stroke-width": (0.6 + 5 * Math.abs(e.w) / biggest).toFixed(2),
        "data-source": e.s.id, "data-target": e.t.id, "data-weight": String(e.w),
      });
      path.addEventListener("mousemove", (ev) => tip.show(ev, edgeTip(e)));
      path.addEventListener("mouseleave", tip.hide);
      eg.appendChild(path);
    }
    vp.appendChild(eg);
    const ng = el("g", { class: "nodes" });
    for (const n of cur.nodes) {
      const g = el("g", {
        class: "fnode " + n.kind + (n.site ? " site-" + n.site[0] : "") + (n.id === sel ? " selected" : ""),
        "data-node": n.id, "data-kind": n.kind, transform: `translate(${n.x},${n.y})`,
      });
      g.appendChild(shape(n));
      if (n.kind === "logit") g.appendChild(el("text", { y: 4, text: D.target.token_str }));
      g.addEventListener("mousemove", (ev) => tip.show(ev, nodeTip(n)));
      g.addEventListener("mouseleave", tip.hide);
      g.addEventListener("click", (ev) => { ev.stopPropagation(); select(n.id); });
      ng.appendChild(g);
    }
    vp.appendChild(ng);
    sizeLabel(cur);
    writeHash();
  }

  // ------------------------------------------------------------------ words for a node
  function where(n) { return "position " + n.pos + " (" + JSON.stringify(D.tokens[n.pos]) + ")"; }
  function activationWord(n) {
    if (n.kind === "feature") return "activation";
    if (n.kind === "logit") return D.target.wrong === null ? "logit" : "logit difference";
    return "norm of its write";
  }
  function facts(n) {
    const rows = [[activationWord(n), fmt(n.activation, 4)]];
    if (n.kind !== "logit") {
      rows.push(["influence on the target", fmt(n.influence, 3) + " (top " + fmt(100 * n.cumulative, 3) + "% of all influence)"]);
      rows.push(["direct effect on the target logit", n.direct === 0 ? "0 (no direct edge)" : fmt(n.direct, 4)]);
    }
    return rows;
  }
  function nodeTip(n) {
    const box = el("div", { id: "tip-content", "data-node": n.id, "data-activation": String(n.activation) });
    box.appendChild(el("b", { text: n.label }));
    box.appendChild(el("div", { class: "muted", text: KIND[n.kind] + " · " + n.id + " · " + where(n) }));
    for (const [k, v] of facts(n)) box.appendChild(el("div", { text: k + ": " + v }));
    if (n.kind === "error" && !n.replaced) box.appendChild(el("div", { class: "muted", text: "this MLP has no transcoder: its whole output is one node" }));
    if (n.kind === "feature") box.appendChild(el("div", { class: "muted", text: "click for its top-activating examples" }));
    return box;
  }
  function edgeTip(e) {
    const box = el("div", {});
    box.appendChild(el("b", { text: e.s.id + " → " + e.t.id }));
    box.appendChild(el("div", { text: "weight " + fmt(e.w, 4) + " (" + (e.w >= 0 ? "excites" : "inhibits") + " " + e.t.label + ")" }));
    box.appendChild(el("div", { class: "muted", text: "the source's contribution to the target's input" }));
    return box;
  }

  // ------------------------------------------------------------------ side panel
  function edgeList(n, incoming) {
    const list = shown().edges.filter((e) => (incoming ? e.t : e.s) === n);
    list.sort((a, b) => Math.abs(b.w) - Math.abs(a.w));
    const box = el("div", { class: "edgelist", id: incoming ? "edges-in" : "edges-out" });
    if (!list.length) box.appendChild(el("div", { class: "muted", text: "none kept at this threshold" }));
    list.slice(0, 8).forEach((e) => {
      const other = incoming ? e.s : e.t;
      const row = el("div", { class: "edgerow", "data-node": other.id }, [
        el("span", { class: "w " + (e.w >= 0 ? "pos" : "neg"), text: (e.w >= 0 ? "+" : "") + fmt(e.w, 3) }),
        " " + other.label + " @" + other.pos,
      ]);
      row.addEventListener("click", () => select(other.id));
      box.appendChild(row);
    });
    if (list.length > 8) box.appendChild(el("div", { class: "muted", text: "… and " + (list.length - 8) + " more" }));
    return box;
  }
  function examples(n) {
    const box = el("div", { id: "examples" });
    const list = D.examples[n.key];
    if (!list || !list.length) {
      box.appendChild(el("div", { class: "muted", text: D.meta.examples
        ? "never active over the data" : "no examples: written without the model's data (circuitfind features graph --examples K adds them)" }));
      return box;
    }
    if (D.meta.examples_source) box.appendChild(el("div", { class: "muted", text: "from " + D.meta.examples_source }));
    list.forEach((x, j) => {
      const row = el("div", { class: "example", "data-rank": String(j), "data-activation": String(x.activation) });
      row.appendChild(el("span", { class: "act", text: fmt(x.activation, 3) }));
      x.context.forEach((t, k) => {
        const last = k === x.context.length - 1;
        row.appendChild(el("span", { class: "tok" + (last ? " act-tok" : ""), title: last ? "activation " + fmt(x.activation, 4) + " here (sequence " + x.row + ", position " + x.pos + ")" : null, text: t }));
      });
      box.appendChild(row);
    });
    return box;
  }
  function panel() {
    const box = document.getElementById("panel");
    box.textContent = "";
    const n = state.node ? byId[state.node] : null;
    if (!n) {
      box.appendChild(el("h2", { text: "Attribution graph" }));
      box.appendChild(el("p", { class: "hint", text: "Rows are layers (the embeddings at the bottom, the target logit at the top), columns the prompt's positions. Hover a node for its activation and influence; click a feature for its top-activating examples and its strongest edges. Drag to pan, scroll to zoom; the slider re-prunes the graph at another node threshold." }));
      box.appendChild(el("p", { class: "hint", text: "Edge weight: the source's contribution to the target's input (a feature's pre-activation, the logit); a target's input is the sum of its incoming edges plus a constant (completeness error " + fmt(D.meta.completeness_max_error, 2) + ")." }));
      return;
    }
    box.appendChild(el("h2", { id: "panel-title", text: n.label }));
    box.appendChild(el("div", { class: "muted", text: KIND[n.kind] + " · " + n.id + " · " + where(n) }));
    box.appendChild(el("table", { id: "facts" }, facts(n).map(([k, v]) => el("tr", {}, [el("td", { text: k }), el("td", { text: v })]))));
    if (n.kind === "feature") {
      box.appendChild(el("h3", { text: "Top-activating examples" }));
      box.appendChild(examples(n));
    }
    if (n.kind === "feature" || n.kind === "logit") {
      box.appendChild(el("h3", { text: "Strongest incoming edges" }));
      box.appendChild(edgeList(n, true));
    }
    if (n.kind !== "logit") {
      box.appendChild(el("h3", { text: "Strongest outgoing edges" }));
      box.appendChild(edgeList(n, false));
    }
  }
  function select(id) { state.node = id; panel(); draw(); }

  // ------------------------------------------------------------------ slider
  const slider = document.getElementById("size");
  slider.max = String(D.points.length - 1);
  slider.addEventListener("input", () => { state.point = Number(slider.value); draw(); panel(); pz.fit(); });
  function sizeLabel(cur) {
    const lab = document.getElementById("size-label");
    const p = cur.p;
    const nf = cur.nodes.filter((n) => n.kind === "feature").length;
    lab.textContent = `${fmt(p.node_threshold, 3)} (edges ${fmt(p.edge_threshold, 3)}): ${cur.nodes.length} nodes (${nf} features), ${p.edges.length} edges` +
      (p.left_out ? ` (the strongest; ${p.left_out} more kept)` : "") + (p.own ? " · the graph's own pruning" : "");
    lab.setAttribute("data-n-nodes", String(cur.nodes.length));
    lab.setAttribute("data-n-edges", String(p.edges.length));
    lab.setAttribute("data-threshold", String(p.node_threshold));
  }

  // ------------------------------------------------------------------ URL state
  function writeHash() {
    const parts = ["p=" + state.point];
    if (state.node) parts.push("node=" + encodeURIComponent(state.node));
    const hash = "#" + parts.join("&");
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }
  function readHash() {
    const h = new URLSearchParams(location.hash.replace(/^#/, ""));
    const p = Number(h.get("p"));
    state.point = h.has("p") && p >= 0 && p < D.points.length ? p : D.initial_point;
    state.node = byId[h.get("node")] ? h.get("node") : null;
    slider.value = String(state.point);
  }
  window.addEventListener("hashchange", () => { readHash(); panel(); draw(); });

  // ------------------------------------------------------------------ legend and summary
  function legend() {
    const L = document.getElementById("legend");
    const item = (cls, s, text) => {
      const box = el("svg", { width: 22, height: 20 }, [el("g", { class: "fnode " + cls, transform: "translate(11,10)" }, [s])]);
      L.appendChild(el("span", {}, [box, text]));
    };
    const sites = D.meta.sites || [];
    if (sites.some((s) => s[0] === "a")) item("feature site-a", shape({ kind: "feature" }), "attention feature");
    if (sites.some((s) => s[0] === "m")) item("feature site-m", shape({ kind: "feature" }), "MLP feature");
    item("error", shape({ kind: "error" }), "error (what the transcoder misses)");
    item("token", shape({ kind: "token" }), "embedding (token + position)");
    const line = (colour) => el("svg", { width: 28, height: 10 }, [el("line", { x1: 1, x2: 27, y1: 5, y2: 5, stroke: colour, "stroke-width": 2.5 })]);
    L.appendChild(el("span", {}, [line(D.colours.positive), "positive weight"]));
    L.appendChild(el("span", {}, [line(D.colours.negative), "negative weight"]));
    L.appendChild(el("span", {}, ["width ∝ |weight|"]));
  }
  const t = D.target;
  document.getElementById("summary").textContent = [
    D.meta.model, T + " tokens",
    "target " + JSON.stringify(t.token_str) + " at position " + t.pos + " (" + (t.wrong === null ? "logit " : "logit difference ") + fmt(t.value, 4) + ")",
    D.meta.n_features + " active features, " + D.meta.n_nodes_total + " nodes before pruning",
  ].filter(Boolean).join(" · ");
  legend();
  readHash();
  panel();
  draw();
  pz.fit();
  window.cfFeatures = { state, data: D, draw, select };
})();
