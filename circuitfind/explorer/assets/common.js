// circuitfind explorers' shared pieces: plain JavaScript, no libraries. Defines window.cfCommon
// for explorer.js (component circuits) and features.js (attribution graphs): the page's JSON
// payload, element building, number formatting, the tooltip, and pan / zoom of an SVG diagram.
"use strict";
window.cfCommon = (function () {
  const SVGNS = "http://www.w3.org/2000/svg";
  const SVG_TAGS = new Set(["svg", "g", "path", "rect", "text", "line", "circle", "title", "polyline", "polygon"]);

  function data() { return JSON.parse(document.getElementById("cf-data").textContent); }

  function el(tag, attrs, kids) {
    const x = SVG_TAGS.has(tag) ? document.createElementNS(SVGNS, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") x.textContent = v; else x.setAttribute(k, v);
    }
    (kids || []).forEach((c) => x.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
    return x;
  }

  function fmt(x, d) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    return Number(x).toPrecision(d || 3).replace(/\.?0+(e|$)/, "$1");
  }

  // One floating tooltip (#tip), placed by the pointer and kept inside the window.
  function tooltip(tip) {
    return {
      show(ev, content) {
        tip.textContent = ""; tip.appendChild(content); tip.style.display = "block";
        const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
        const y = Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
        tip.style.left = x + "px"; tip.style.top = y + "px";
      },
      hide() { tip.style.display = "none"; },
    };
  }

  // Drag to pan, wheel to zoom about the pointer, the #zoom-in / #zoom-out / #zoom-fit buttons.
  // bounds() gives the diagram's extent {x0, x1, y0, y1} in user units (margins included);
  // onBackground() runs on a click on the empty diagram (not at the end of a drag).
  function panZoom(svg, vp, bounds, onBackground) {
    const view = { x: 0, y: 0, k: 1 };
    function apply() { vp.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`); }
    function fit() {
      const b = bounds(), box = svg.getBoundingClientRect();
      view.k = Math.min(1.6, Math.max(0.05, Math.min(box.width / (b.x1 - b.x0), box.height / (b.y1 - b.y0))));
      view.x = (box.width - (b.x0 + b.x1) * view.k) / 2;
      view.y = (box.height - (b.y0 + b.y1) * view.k) / 2;
      apply();
    }
    let drag = null, moved = false;
    svg.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX - view.x, y: ev.clientY - view.y, x0: ev.clientX, y0: ev.clientY }; moved = false; svg.classList.add("dragging"); });
    window.addEventListener("mousemove", (ev) => {
      if (!drag) return;
      if (Math.abs(ev.clientX - drag.x0) + Math.abs(ev.clientY - drag.y0) > 3) moved = true;
      view.x = ev.clientX - drag.x; view.y = ev.clientY - drag.y; apply();
    });
    window.addEventListener("mouseup", () => { drag = null; svg.classList.remove("dragging"); });
    svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const box = svg.getBoundingClientRect();
      const px = ev.clientX - box.left, py = ev.clientY - box.top;
      const k = Math.min(8, Math.max(0.03, view.k * Math.exp(-ev.deltaY * 0.0015)));
      view.x = px - (px - view.x) * (k / view.k); view.y = py - (py - view.y) * (k / view.k); view.k = k;
      apply();
    }, { passive: false });
    svg.addEventListener("click", () => { if (!moved && onBackground) onBackground(); });
    function zoomBy(f) { const b = svg.getBoundingClientRect(); svg.dispatchEvent(new WheelEvent("wheel", { deltaY: -Math.log(f) / 0.0015, clientX: b.left + b.width / 2, clientY: b.top + b.height / 2 })); }
    document.getElementById("zoom-in").addEventListener("click", () => zoomBy(1.25));
    document.getElementById("zoom-out").addEventListener("click", () => zoomBy(0.8));
    document.getElementById("zoom-fit").addEventListener("click", fit);
    return { view, apply, fit };
  }

  return { SVGNS, data, el, fmt, tooltip, panZoom };
})();
