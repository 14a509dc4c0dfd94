// circuitfind explorer: plain JavaScript, no libraries. Reads the JSON payload in #cf-data
// (circuitfind/explorer/data.py documents it) and draws the circuit as SVG; common.js (loaded
// first) gives the helpers and pan / zoom it shares with the feature-graph explorer.
"use strict";
(function () {
  const { el, fmt } = window.cfCommon;
  const D = window.cfCommon.data();
  const MIN_OPACITY = 0.15; // render.MIN_OPACITY
  const NODE_W = 72, NODE_H = 30, PORT = { q: -20, k: 0, v: 20, "": 0 };
  const state = { point: D.initial_point, node: null, edge: null, group: false,
                  offNodes: new Set(), offEdges: new Set() };
  const nodes = D.nodes;
  const byId = {};
  nodes.forEach((n, i) => { n.index = i; byId[n.id] = n; });
  const edges = D.edges.map((e, i) => {
    const s = nodes[e[0]], r = nodes[e[1]];
    const name = s.id + "->" + r.id + (e[2] ? "<" + e[2] + ">" : "");
    return { i, s, r, qkv: e[2], score: e[3], freq: e[4], name };
  });
  const edgeByName = {};
  edges.forEach((e) => { edgeByName[e.name] = e; });

  // ------------------------------------------------------------------ helpers
  // attention patterns are sent as their causal triangle, row by row (probe.py)
  function tri(q, k) { return (q * (q + 1)) / 2 + k; }
  function pm(v) { return v ? fmt(v[0]) + " ± " + fmt(v[1], 2) : "–"; }
  // An edge helps the task when sign * score > 0 (sign from the circuit's score orientation).
  function helps(score) {
    if (score === null) return null;
    return D.sign === null ? null : D.sign * score > 0;
  }
  function effectWord(score) {
    const h = helps(score);
    if (score === null) return "not scored";
    if (h === null) return score >= 0 ? "score ≥ 0 (sign of help unknown)" : "score < 0 (sign of help unknown)";
    return h ? "helps the task" : "hurts the task";
  }

  // ------------------------------------------------------------------ what is shown
  function groupOf(n) {
    if (!state.group || n.kind !== "head") return n.id;
    return "L" + n.layer + ":" + (n.role || "unlabelled");
  }
  function visible() {
    const p = D.points[state.point];
    const list = p.edges.map((i) => edges[i]);
    const groups = {};
    function node(n) {
      const g = groupOf(n);
      if (!groups[g]) groups[g] = { id: g, members: [], x: 0, y: n.y, kind: n.kind, layer: n.layer };
      if (!groups[g].members.includes(n)) groups[g].members.push(n);
      return groups[g];
    }
    node(byId.input); node(byId.logits);
    const agg = {};
    for (const e of list) {
      const a = node(e.s), b = node(e.r);
      const key = a.id + "|" + b.id + "|" + e.qkv;
      if (!agg[key]) agg[key] = { s: a, r: b, qkv: e.qkv, score: 0, freq: 0, nf: 0, members: [] };
      const x = agg[key];
      x.members.push(e);
      x.score += e.score === null ? 0 : e.score;
      if (e.freq !== null) { x.freq += e.freq; x.nf += 1; }
    }
    for (const g of Object.values(groups)) {
      g.x = g.members.reduce((t, n) => t + n.x, 0) / g.members.length;
      g.node = g.members.length === 1 ? g.members[0] : null;
      if (g.node) { g.label = g.node.label; g.role = g.node.role; } else {
        g.role = g.members[0].role;
        g.label = "L" + g.layer + " ×" + g.members.length;
      }
    }
    if (state.group) spread(Object.values(groups));
    const shown = Object.values(agg).map((x) => ({
      s: x.s, r: x.r, qkv: x.qkv, score: x.score, members: x.members,
      freq: x.nf ? x.freq / x.nf : null,
      name: x.members.length === 1 ? x.members[0].name : x.members.length + " edges " + x.s.id + "->" + x.r.id,
    }));
    return { groups, edges: shown, point: p };
  }

  // Supernodes sit at their members' mean x; spread a row's boxes apart where they would
  // overlap, keeping the row's centre.
  function spread(list) {
    const rows = {};
    list.forEach((g) => { (rows[g.y] = rows[g.y] || []).push(g); });
    for (const row of Object.values(rows)) {
      row.sort((a, b) => a.x - b.x);
      const centre = row.reduce((t, g) => t + g.x, 0) / row.length;
      for (let i = 1; i < row.length; i++) row[i].x = Math.max(row[i].x, row[i - 1].x + NODE_W + 36);
      const shift = centre - row.reduce((t, g) => t + g.x, 0) / row.length;
      row.forEach((g) => { g.x += shift; });
    }
  }

  // ------------------------------------------------------------------ diagram
  const svg = document.getElementById("diagram");
  const vp = el("g", { id: "viewport" });
  svg.appendChild(vp);
  let current = null;

  function edgePath(e) {
    const x1 = e.s.x, y1 = e.s.y - NODE_H / 2;
    const x2 = e.r.x + (e.r.kind === "head" ? PORT[e.qkv] : 0), y2 = e.r.y + NODE_H / 2;
    const my = (y1 + y2) / 2;
    return `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`;
  }
  function isOff(e) {
    return e.members.every((m) => state.offEdges.has(m.name) || state.offNodes.has(m.s.id) || state.offNodes.has(m.r.id));
  }

  function draw() {
    current = visible();
    vp.textContent = "";
    const rowsG = el("g", { class: "rows" });
    const minX = Math.min(...nodes.map((n) => n.x));
    for (const r of D.rows) rowsG.appendChild(el("text", { class: "rowlabel", x: minX - 50, y: r.y + 4, text: r.label }));
    vp.appendChild(rowsG);
    const biggest = Math.max(1e-12, ...current.edges.map((e) => Math.abs(e.score)));
    const eg = el("g", { class: "edges" });
    for (const e of current.edges) {
      const h = helps(e.score);
      // an edge the resamples never kept stays visible (the static diagram's floor too)
      const opacity = e.freq === null ? 1 : Math.max(MIN_OPACITY, e.freq);
      const path = el("path", {
        class: "edge" + (isOff(e) ? " ablated" : "") + (state.edge === e.name ? " selected" : ""),
        d: edgePath(e),
        stroke: D.edge_colours[e.qkv] || D.edge_colours[""],
        "stroke-width": (0.8 + 5.2 * Math.abs(e.score) / biggest).toFixed(2),
        "stroke-opacity": opacity.toFixed(3),
        "stroke-dasharray": h === false ? "7 4" : null,
        "data-edge": e.name, "data-helps": h === null ? "unknown" : String(h),
        "data-opacity": opacity.toFixed(3), "data-frequency": e.freq === null ? "" : String(e.freq),
      });
      path.addEventListener("mousemove", (ev) => showTip(ev, edgeTip(e)));
      path.addEventListener("mouseleave", hideTip);
      path.addEventListener("click", (ev) => { ev.stopPropagation(); selectEdge(e); });
      eg.appendChild(path);
    }
    vp.appendChild(eg);
    const ng = el("g", { class: "nodes" });
    for (const g of Object.values(current.groups)) {
      const fill = g.kind === "head" ? D.roles[g.role || "unlabelled"] || "#f0f0f0"
        : g.kind === "mlp" ? "#e0e0e0" : "#ffffff";
      const off = g.members.every((n) => state.offNodes.has(n.id));
      const sel = g.members.some((n) => n.id === state.node);
      const box = el("g", {
        class: "node" + (g.node ? "" : " super") + (sel ? " selected" : "") + (off ? " ablated" : ""),
        "data-node": g.id, transform: `translate(${g.x},${g.y})`,
      });
      const w = g.node ? NODE_W : NODE_W + 24;
      box.appendChild(el("rect", { x: -w / 2, y: -NODE_H / 2, width: w, height: NODE_H, rx: 7, fill }));
      const hasRole = g.kind === "head" && g.role && g.role !== "unlabelled";
      box.appendChild(el("text", { y: hasRole ? -2 : 4, text: g.label }));
      if (hasRole) box.appendChild(el("text", { class: "role", y: 10, text: g.role }));
      box.addEventListener("mousemove", (ev) => showTip(ev, nodeTip(g)));
      box.addEventListener("mouseleave", hideTip);
      box.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (g.node) selectNode(g.node.id); else { state.group = false; syncControls(); selectNode(g.members[0].id); }
      });
      ng.appendChild(box);
    }
    vp.appendChild(ng);
    sizeLabel();
    drawCurve();
    drawTokens();
    writeHash();
  }

  // ------------------------------------------------------------------ pan and zoom
  // the diagram's extent: its nodes, with room for the row labels on the left
  function bounds() {
    const xs = nodes.map((n) => n.x), ys = nodes.map((n) => n.y);
    return { x0: Math.min(...xs) - 130, x1: Math.max(...xs) + 70, y0: Math.min(...ys) - 40, y1: Math.max(...ys) + 40 };
  }
  const { fit } = window.cfCommon.panZoom(svg, vp, bounds, () => { state.node = null; state.edge = null; panel(); draw(); });

  // ------------------------------------------------------------------ tooltips
  const tip = window.cfCommon.tooltip(document.getElementById("tip"));
  const showTip = tip.show, hideTip = tip.hide;
  function edgeLine(e) { return e.name + ": " + fmt(e.score) + " (" + effectWord(e.score) + ")"; }
  function topEdges(ids, incoming) {
    const list = current.edges.filter((e) => ids.includes(incoming ? e.r.id : e.s.id));
    return list.sort((a, b) => Math.abs(b.score) - Math.abs(a.score)).slice(0, 3);
  }
  function nodeTip(g) {
    const box = el("div", { id: "tip-content" });
    const n = g.node;
    box.appendChild(el("b", { text: n ? n.label + " (" + n.id + ")" : g.label + " " + (g.role || "") }));
    if (n) {
      if (n.kind === "head") box.appendChild(el("div", { text: "role: " + (n.role || "unlabelled") + (n.role_score ? " (" + fmt(n.role_score) + ")" : "") }));
      const ev = Object.entries(n.evidence || {});
      if (ev.length) box.appendChild(el("div", { class: "muted", text: "evidence: " + ev.map(([k, v]) => k + " " + fmt(v)).join(", ") }));
      if (n.dla) box.appendChild(el("div", { text: "DLA " + (n.dla.diff ? "answer − wrong " + pm(n.dla.diff) : "to answer " + pm(n.dla.answer)) }));
      box.appendChild(el("div", { text: "score in the circuit: " + (n.score === null ? "not in the circuit" : fmt(n.score)) }));
    } else {
      box.appendChild(el("div", { text: g.members.map((m) => m.label).join(", ") }));
      box.appendChild(el("div", { class: "muted", text: "click to ungroup" }));
    }
    const ids = [g.id];
    for (const [title, inc] of [["top incoming", true], ["top outgoing", false]]) {
      const list = topEdges(ids, inc);
      if (!list.length) continue;
      box.appendChild(el("div", { class: "muted", text: title + ":" }));
      list.forEach((e) => box.appendChild(el("div", { text: "  " + edgeLine(e) })));
    }
    return box;
  }
  function edgeTip(e) {
    const box = el("div", {});
    box.appendChild(el("b", { text: e.name }));
    box.appendChild(el("div", { text: "score " + fmt(e.score) + " — " + effectWord(e.score) }));
    box.appendChild(el("div", { class: "muted", text: { q: "into the query", k: "into the key", v: "into the value", "": "into an MLP or the logits" }[e.qkv] }));
    if (e.freq !== null) box.appendChild(el("div", { text: "bootstrap frequency " + fmt(e.freq) }));
    return box;
  }

  // ------------------------------------------------------------------ slider and curve
  const slider = document.getElementById("size");
  slider.max = String(D.points.length - 1);
  slider.addEventListener("input", () => { state.point = Number(slider.value); draw(); });
  function sizeLabel() {
    const p = D.points[state.point];
    const lab = document.getElementById("size-label");
    lab.textContent = "";
    const f = p.faithfulness === null ? "not measured" : fmt(p.faithfulness) + (p.stderr === null ? "" : " ± " + fmt(p.stderr, 2));
    lab.appendChild(el("span", { text: `${p.label}: ${p.n_edges} of ${D.meta.n_edges_total} edges (${fmt(p.percent)}%) · faithfulness ${f}` }));
    if (p.left_out) lab.appendChild(el("span", { class: "muted", text: ` · drawing the ${p.edges.length} strongest` }));
    lab.setAttribute("data-faithfulness", p.faithfulness === null ? "" : String(p.faithfulness));
    lab.setAttribute("data-stderr", p.stderr === null ? "" : String(p.stderr));
    lab.setAttribute("data-n-edges", String(p.n_edges));
  }
  function drawCurve() {
    const c = document.getElementById("curve");
    c.textContent = "";
    const W = 220, H = 70, pad = 8;
    const xs = D.points.map((p) => Math.log10(Math.max(p.percent, 0.01)));
    const lo = Math.min(...xs), hi = Math.max(...xs, lo + 1e-9);
    const fs = D.points.map((p) => p.faithfulness).filter((f) => f !== null);
    const fmin = Math.min(0, ...fs), fmax = Math.max(1, ...fs);
    const X = (i) => pad + (W - 2 * pad) * (xs[i] - lo) / (hi - lo);
    const Y = (f) => H - pad - (H - 2 * pad) * (f - fmin) / (fmax - fmin);
    c.appendChild(el("line", { x1: pad, x2: W - pad, y1: Y(1), y2: Y(1), stroke: "#bbb", "stroke-dasharray": "3 3" }));
    const pts = D.points.map((p, i) => (p.faithfulness === null || p.own ? null : `${X(i)},${Y(p.faithfulness)}`)).filter(Boolean);
    c.appendChild(el("polyline", { points: pts.join(" "), fill: "none", stroke: "#1f77b4" }));
    D.points.forEach((p, i) => {
      if (p.faithfulness === null) return;
      if (p.stderr !== null) c.appendChild(el("line", { x1: X(i), x2: X(i), y1: Y(p.faithfulness - p.stderr), y2: Y(p.faithfulness + p.stderr), stroke: "#888" }));
      const dot = el("circle", { cx: X(i), cy: Y(p.faithfulness), r: i === state.point ? 5 : 2.5, fill: i === state.point ? "#d62728" : p.own ? "#ff7f0e" : "#1f77b4", style: "cursor:pointer" });
      dot.appendChild(el("title", { text: p.label + ": " + fmt(p.faithfulness) }));
      dot.addEventListener("click", () => { state.point = i; slider.value = String(i); draw(); });
      c.appendChild(dot);
    });
  }

  // ------------------------------------------------------------------ tokens
  function drawTokens() {
    const box = document.getElementById("tokens");
    box.textContent = "";
    if (!D.prompts.length) { box.appendChild(el("p", { class: "muted", text: "No prompts: this explorer was written without the model and task (circuitfind discover writes them in; circuitfind serve DIR adds them)." })); return; }
    const n = state.node ? byId[state.node] : null;
    const pats = n && D.patterns[n.id];
    box.appendChild(el("div", { class: "muted", text: "Example prompts. The boxed token is the readout position, where the circuit's answer is read (the metric is taken at its logits)." + (pats ? " Shading: " + n.label + "'s attention from the readout position." : "") }));
    D.prompts.forEach((p, i) => {
      const row = el("div", { class: "prompt", "data-prompt": String(i) });
      const T = p.tokens.length;
      p.tokens.forEach((t, k) => {
        const a = pats && k <= p.readout ? pats[i][tri(p.readout, k)] / 100 : 0;
        row.appendChild(el("span", { class: "tok" + (k === p.readout ? " readout" : ""), "data-pos": String(k),
          title: k === p.readout ? "readout position " + k : "position " + k,
          style: a ? `background: rgba(214,39,40,${a.toFixed(2)})` : null, text: t }));
      });
      row.appendChild(el("span", { class: "muted", text: "  → answer " + JSON.stringify(p.answer) + (p.wrong === null ? "" : ", wrong " + JSON.stringify(p.wrong)) }));
      box.appendChild(row);
    });
  }

  // ------------------------------------------------------------------ side panel
  function bar(v, scale) {
    const w = v === null ? 0 : Math.min(120, 120 * Math.abs(v) / scale);
    return el("span", { class: "bar" + (v < 0 ? " neg" : ""), style: `width:${w.toFixed(1)}px` });
  }
  function heatmap(p, flat) {
    const T = p.tokens.length, cell = Math.max(6, Math.min(14, Math.floor(300 / T)));
    const lab = 60, s = el("svg", { class: "heat", width: lab + T * cell + 4, height: lab + T * cell + 4 });
    for (let q = 0; q < T; q++) {
      s.appendChild(el("text", { x: lab - 3, y: lab + q * cell + cell * 0.8, "font-size": Math.min(9, cell), "text-anchor": "end", "font-weight": q === p.readout ? "bold" : null, fill: q === p.readout ? "#d62728" : "#333", text: p.tokens[q].slice(0, 8) }));
      s.appendChild(el("text", { transform: `translate(${lab + q * cell + cell * 0.7},${lab - 3}) rotate(-60)`, "font-size": Math.min(9, cell), text: p.tokens[q].slice(0, 8) }));
      for (let k = 0; k <= q; k++) {
        const a = flat[tri(q, k)] / 100;
        const r = el("rect", { x: lab + k * cell, y: lab + q * cell, width: cell, height: cell, fill: `rgba(31,119,180,${a.toFixed(2)})`, stroke: "#eee" });
        r.appendChild(el("title", { text: `${p.tokens[q]} → ${p.tokens[k]}: ${Math.round(a * 100)}%` }));
        s.appendChild(r);
      }
    }
    return s;
  }
  function panel() {
    const box = document.getElementById("panel");
    box.textContent = "";
    if (state.edge) return edgePanel(box, edgeByName[state.edge]);
    if (!state.node) {
      box.appendChild(el("h2", { text: "Circuit explorer" }));
      box.appendChild(el("p", { class: "hint", text: "Hover a node or edge for its evidence; click a node for its attention pattern and direct logit attribution. Drag to pan, scroll to zoom. The slider sets the circuit size; its faithfulness was measured at each stop." }));
      if (D.serve) box.appendChild(el("p", { class: "hint", text: "Live: select a node or edge and ablate it to measure the circuit without it." }));
      liveBox(box);
      return;
    }
    const n = byId[state.node];
    box.appendChild(el("h2", { id: "panel-title", text: n.label + " (" + n.id + ")" }));
    if (n.kind === "head") box.appendChild(el("div", { text: "role: " + (n.role || "unlabelled") + (n.role_score ? " (" + fmt(n.role_score) + ")" : "") }));
    const ev = Object.entries(n.evidence || {});
    if (ev.length) {
      box.appendChild(el("h3", { text: "Evidence (pattern scores, DLA)" }));
      box.appendChild(el("table", {}, ev.map(([k, v]) => el("tr", {}, [el("td", { text: k }), el("td", { text: fmt(v) })]))));
    }
    box.appendChild(el("div", { text: "score in the circuit (sum of its outgoing edges' scores): " + (n.score === null ? "not in the circuit" : fmt(n.score)) }));
    box.appendChild(el("h3", { text: "Direct logit attribution at the readout" }));
    if (n.dla) {
      const rows = [["toward the answer", n.dla.answer], ["toward the wrong answer", n.dla.wrong], ["answer − wrong", n.dla.diff]].filter((r) => r[1]);
      const scale = Math.max(1e-9, ...rows.map((r) => Math.abs(r[1][0] || 0)));
      box.appendChild(el("table", { id: "dla" }, rows.map(([k, v]) => el("tr", {}, [el("td", { text: k }), el("td", { text: pm(v) }), el("td", {}, [bar(v[0], scale)])]))));
      box.appendChild(el("div", { class: "muted", text: "mean ± standard error over " + D.dla_prompts + " prompts (logits)" }));
    } else box.appendChild(el("div", { class: "muted", text: "not measured (written without the model, or its logits are not a sum of node terms)" }));
    const pats = D.patterns[n.id];
    if (pats) {
      box.appendChild(el("h3", { text: "Attention pattern (query row → key column)" }));
      D.prompts.forEach((p, i) => box.appendChild(heatmap(p, pats[i])));
    }
    if (D.serve && n.kind !== "input" && n.kind !== "logits") {
      const off = state.offNodes.has(n.id);
      const b = el("button", { id: "toggle-node", text: off ? "restore this node" : "ablate this node" });
      b.addEventListener("click", () => { if (off) state.offNodes.delete(n.id); else state.offNodes.add(n.id); reevaluate(); });
      box.appendChild(el("p", {}, [b]));
    }
    liveBox(box);
  }
  function edgePanel(box, e) {
    box.appendChild(el("h2", { id: "panel-title", text: e.name }));
    box.appendChild(el("div", { text: "score " + fmt(e.score) + " — " + effectWord(e.score) }));
    box.appendChild(el("div", { class: "muted", text: "score = metric with this edge ablated − clean metric" }));
    if (e.freq !== null) box.appendChild(el("div", { text: "bootstrap frequency " + fmt(e.freq) }));
    if (D.serve) {
      const off = state.offEdges.has(e.name);
      const b = el("button", { id: "toggle-edge", text: off ? "restore this edge" : "ablate this edge" });
      b.addEventListener("click", () => { if (off) state.offEdges.delete(e.name); else state.offEdges.add(e.name); reevaluate(); });
      box.appendChild(el("p", {}, [b]));
    }
    liveBox(box);
  }
  let live = null;
  function liveBox(box) {
    if (!D.serve) return;
    const d = el("div", { id: "live" });
    if (live) d.textContent = live;
    box.appendChild(d);
  }
  function selectNode(id) { state.node = id; state.edge = null; panel(); draw(); }
  function selectEdge(e) {
    if (e.members.length !== 1) return;
    state.edge = e.name; state.node = null; panel(); draw();
  }

  // ------------------------------------------------------------------ live re-evaluation
  function reevaluate() {
    live = "measuring…"; panel(); draw();
    fetch("api/evaluate", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ point: state.point, ablate_nodes: [...state.offNodes], ablate_edges: [...state.offEdges] }) })
      .then((r) => r.json()).then((res) => {
        if (res.error) { live = "error: " + res.error; } else {
          live = `without ${res.removed.join(", ") || "nothing"}: faithfulness ${fmt(res.faithfulness)} ± ${fmt(res.faithfulness_stderr, 2)} (${res.n_edges} edges)` + (res.reliable ? "" : " — unreliable: " + res.warning);
        }
        const d = document.getElementById("live");
        if (d) { d.textContent = live; d.setAttribute("data-faithfulness", String(res.faithfulness)); }
      }).catch((err) => { live = "error: " + err; const d = document.getElementById("live"); if (d) d.textContent = live; });
  }

  // ------------------------------------------------------------------ controls and URL state
  const groupBox = document.getElementById("group");
  groupBox.addEventListener("change", () => { state.group = groupBox.checked; draw(); });
  function syncControls() { slider.value = String(state.point); groupBox.checked = state.group; }
  function writeHash() {
    const parts = ["p=" + state.point];
    if (state.node) parts.push("node=" + encodeURIComponent(state.node));
    if (state.edge) parts.push("edge=" + encodeURIComponent(state.edge));
    if (state.group) parts.push("group=1");
    if (state.offNodes.size) parts.push("off=" + [...state.offNodes].map(encodeURIComponent).join(","));
    if (state.offEdges.size) parts.push("offe=" + [...state.offEdges].map(encodeURIComponent).join(","));
    const hash = "#" + parts.join("&");
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }
  function readHash() {
    const h = new URLSearchParams(location.hash.replace(/^#/, ""));
    const p = Number(h.get("p"));
    state.point = h.has("p") && p >= 0 && p < D.points.length ? p : D.initial_point;
    state.node = byId[h.get("node")] ? h.get("node") : null;
    state.edge = edgeByName[h.get("edge")] ? h.get("edge") : null;
    state.group = h.get("group") === "1";
    state.offNodes = new Set((h.get("off") || "").split(",").filter((x) => byId[x]));
    state.offEdges = new Set((h.get("offe") || "").split(",").filter((x) => edgeByName[x]));
    syncControls();
  }
  window.addEventListener("hashchange", () => { readHash(); panel(); draw(); });

  // ------------------------------------------------------------------ legend
  function legend() {
    const L = document.getElementById("legend");
    const used = new Set(nodes.filter((n) => n.kind === "head").map((n) => n.role || "unlabelled"));
    for (const [role, colour] of Object.entries(D.roles)) {
      if (used.has(role)) L.appendChild(el("span", {}, [el("span", { class: "sw", style: "background:" + colour }), role]));
    }
    const line = (colour, dash) => el("svg", { width: 28, height: 10 }, [el("line", { x1: 1, x2: 27, y1: 5, y2: 5, stroke: colour, "stroke-width": 2.5, "stroke-dasharray": dash })]);
    for (const [k, what] of [["q", "query"], ["k", "key"], ["v", "value"], ["", "MLP / logits input"]]) L.appendChild(el("span", {}, [line(D.edge_colours[k], null), what]));
    if (D.sign !== null) {
      L.appendChild(el("span", { id: "legend-helps" }, [line("#333", null), "helps the task (ablating it moves the metric toward the empty circuit's)"]));
      L.appendChild(el("span", { id: "legend-hurts" }, [line("#333", "7 4"), "hurts the task (ablating it helps)"]));
    } else L.appendChild(el("span", {}, ["edges all solid: this circuit does not record which score sign helps the task"]));
    L.appendChild(el("span", {}, ["width ∝ |score|"]));
    if (D.has_frequency) L.appendChild(el("span", {}, ["opacity = bootstrap frequency"]));
  }

  const m = D.meta;
  document.getElementById("summary").textContent = [m.model, m.task, m.method, m.ablation && "ablation " + m.ablation, "metric " + m.metric, m.n_prompts && m.n_prompts + " prompts"].filter(Boolean).join(" · ") + (m.reliable === false ? " · UNRELIABLE: " + m.warning : "");
  legend();
  readHash();
  panel();
  draw();
  fit();
  if (D.serve && (state.offNodes.size || state.offEdges.size)) reevaluate();
  window.cfExplorer = { state, data: D, draw, visible };
})();
