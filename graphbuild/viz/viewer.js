// graphbuild viz: the interactive viewer inlined into every HTML picture.
// It reads the laid-out model from <script id="graph-data"> (positions are computed in Python)
// and draws it on one canvas: only what is in view, text only when it is legible. Zoom with the
// wheel, pan by dragging, click a node for its details, search by node or tensor name, and
// collapse name scopes from the side bar. window.gbViewer exposes the state for tests.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("graph-data").textContent);
  const BRIDGE = { allreduce: "#7048e8", allgather: "#0ca678" };
  const TP_RING = "#c92a2a";
  const nodes = data.nodes, edges = data.edges;
  const byId = new Map();
  nodes.forEach(function (n, i) { n.index = i; byId.set(n.id, n); });
  edges.forEach(function (e) {
    const p = e.points; let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let i = 0; i < p.length; i += 2) { x0 = Math.min(x0, p[i]); x1 = Math.max(x1, p[i]); y0 = Math.min(y0, p[i + 1]); y1 = Math.max(y1, p[i + 1]); }
    e.bbox = [x0, y0, x1, y1]; e.from = byId.get(e.source); e.to = byId.get(e.target);
  });

  // ------------------------------------------------------------------ page
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const h = data.header;
  const top = el("div", { id: "top" });
  top.appendChild(el("h1", null, h.name));
  const facts = el("div", { class: "facts" });
  function fact(label, value) { facts.appendChild(document.createTextNode(label + " ")); facts.appendChild(el("b", null, String(value))); facts.appendChild(document.createTextNode("   ")); }
  fact("view", h.kind); fact("tp_size", h.tp_size); fact("dtype", h.dtype || "-");
  if (h.opset) fact("opset", h.opset);
  if (h.files && h.files.length) fact("files", h.files.length + " (" + bytes(h.files.reduce(function (s, f) { return s + f.bytes; }, 0)) + ")");
  fact("weights", bytes(h.weight_bytes || 0)); fact("nodes", nodes.length);
  if (h.files && h.files.length) facts.title = h.files.map(function (f) { return f.path + "  " + bytes(f.bytes); }).join("\n");
  top.appendChild(facts);
  const search = el("input", { id: "search", type: "search", placeholder: "search node or tensor name", autocomplete: "off" });
  top.appendChild(search);
  const fitButton = el("button", { id: "fit", title: "fit the whole network into view" }, "fit");
  top.appendChild(fitButton);
  document.body.appendChild(top);
  const side = el("div", { id: "side" });
  document.body.appendChild(side);
  const stage = el("div", { id: "stage" });
  const canvas = el("canvas", { id: "canvas" });
  stage.appendChild(canvas);
  document.body.appendChild(stage);
  const results = el("div", { id: "results" });
  const details = el("div", { id: "details" });
  const tooltip = el("div", { id: "tooltip" });
  [results, details, tooltip].forEach(function (x) { document.body.appendChild(x); });

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"]; let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  function shape(s) { return "(" + s.join(", ") + ")"; }
  function fill(n) { return n.family === "collective" ? (BRIDGE[n.op.toLowerCase()] || data.families.collective) : data.families[n.family]; }

  // ------------------------------------------------------------------ legend and scopes
  side.appendChild(el("h2", null, "op families"));
  Object.keys(data.families).forEach(function (f) {
    if (f === "collective") return;
    const row = el("div", { class: "legend-row" }); const sw = el("span", { class: "swatch" }); sw.style.background = data.families[f];
    row.appendChild(sw); row.appendChild(el("span", null, f)); side.appendChild(row);
  });
  [["swatch tp", "TPEmbedding (tensor-parallel lookup)"], ["swatch bridge", "all-reduce (sum) bridge", BRIDGE.allreduce], ["swatch bridge gather", "all-gather (concat) bridge"]].forEach(function (item) {
    const row = el("div", { class: "legend-row" }); const sw = el("span", { class: item[0] });
    if (item[2]) sw.style.background = item[2];
    row.appendChild(sw); row.appendChild(el("span", null, item[1])); side.appendChild(row);
  });
  const collapsed = new Set();
  const scopeInfo = new Map();
  if (data.scopes.length) side.appendChild(el("h2", null, "name scopes"));
  data.scopes.forEach(function (s) {
    const depth = s.parent ? scopeInfo.get(s.parent).depth + 1 : 0;
    const row = el("div", { class: "scope-row", "data-scope": s.name });
    row.style.paddingLeft = (depth * 12) + "px";
    const button = el("button", { title: "collapse or expand this scope" }, "\u2212");
    const label = el("span", { title: "show " + s.name }, s.name);
    row.appendChild(button); row.appendChild(label); row.appendChild(el("span", { class: "count" }, String(s.nodes.length)));
    side.appendChild(row);
    scopeInfo.set(s.name, { depth: depth, scope: s, button: button });
    button.addEventListener("click", function () { toggleScope(s.name); });
    label.addEventListener("click", function () { showBox(boxOf(s.nodes.map(function (id) { return byId.get(id); }))); });
  });

  // Each hidden node maps to the outermost collapsed scope holding it; one box per scope and column.
  let hiddenBy = new Map(), groups = [];
  function toggleScope(name) {
    if (collapsed.has(name)) collapsed.delete(name); else collapsed.add(name);
    scopeInfo.get(name).button.textContent = collapsed.has(name) ? "+" : "\u2212";
    regroup(); redraw();
  }
  function regroup() {
    hiddenBy = new Map(); const byKey = new Map(); groups = [];
    data.scopes.forEach(function (s) {
      if (!collapsed.has(s.name)) return;
      s.nodes.forEach(function (id) {
        if (hiddenBy.has(id)) return;
        const n = byId.get(id); const key = s.name + "\u0000" + n.column;
        let g = byKey.get(key);
        if (!g) { g = { scope: s.name, members: [] }; byKey.set(key, g); groups.push(g); }
        g.members.push(n); hiddenBy.set(id, g);
      });
    });
    groups.forEach(function (g) { const b = boxOf(g.members); g.x = b[0]; g.y = b[1]; g.w = b[2] - b[0]; g.h = b[3] - b[1]; });
  }
  function boxOf(list) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    list.forEach(function (n) { x0 = Math.min(x0, n.x - n.w / 2); x1 = Math.max(x1, n.x + n.w / 2); y0 = Math.min(y0, n.y); y1 = Math.max(y1, n.y + n.h); });
    return [x0, y0, x1, y1];
  }

  // ------------------------------------------------------------------ view
  const ctx = canvas.getContext("2d");
  const view = { scale: 1, x: 0, y: 0 };  // screen = (world - (x, y)) * scale
  let width = 0, height = 0, dirty = true, selected = null, hovered = null, matches = new Set();
  function resize() {
    const ratio = window.devicePixelRatio || 1; const r = stage.getBoundingClientRect();
    width = r.width; height = r.height;
    canvas.width = Math.max(1, Math.round(width * ratio)); canvas.height = Math.max(1, Math.round(height * ratio));
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0); redraw();
  }
  function showBox(b, maxScale) {
    const pad = 40; const bw = Math.max(b[2] - b[0], 1), bh = Math.max(b[3] - b[1], 1);
    view.scale = Math.min((width - 2 * pad) / bw, (height - 2 * pad) / bh, maxScale || 1.5);
    view.x = (b[0] + b[2]) / 2 - width / 2 / view.scale; view.y = (b[1] + b[3]) / 2 - height / 2 / view.scale;
    redraw();
  }
  function fit(all) {
    const size = data.header.size;
    if (all) { showBox([0, -10, size[0], size[1]]); return; }
    // Wide enough for every column, beside the details panel when it is open; a tall network starts at its top.
    const room = width - (details.style.display === "block" ? details.offsetWidth + 20 : 0);
    view.scale = Math.min(1.2, Math.max(0.05, (room - 40) / size[0]));
    view.x = size[0] / 2 - room / 2 / view.scale; view.y = -10; redraw();
  }
  function centerOn(n) {
    view.scale = Math.max(view.scale, 0.9);
    view.x = n.x - width / 2 / view.scale; view.y = n.y + n.h / 2 - height / 2 / view.scale; redraw();
  }
  function toWorld(sx, sy) { return [sx / view.scale + view.x, sy / view.scale + view.y]; }
  function redraw() { if (!dirty) { dirty = true; requestAnimationFrame(draw); } }

  // ------------------------------------------------------------------ drawing
  function roundRect(x, y, w, hh, r) {
    ctx.beginPath(); ctx.moveTo(x + r, y); ctx.arcTo(x + w, y, x + w, y + hh, r); ctx.arcTo(x + w, y + hh, x, y + hh, r);
    ctx.arcTo(x, y + hh, x, y, r); ctx.arcTo(x, y, x + w, y, r); ctx.closePath();
  }
  function inView(x0, y0, x1, y1, w) { return x1 >= w[0] && x0 <= w[2] && y1 >= w[1] && y0 <= w[3]; }
  function anchor(n, bottom) {
    const g = hiddenBy.get(n.id);
    if (g) return [g.x + g.w / 2, bottom ? g.y + g.h : g.y];
    return null;
  }
  function draw() {
    dirty = false;
    const s = view.scale;
    ctx.save(); ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, width, height);
    ctx.scale(s, s); ctx.translate(-view.x, -view.y);
    const w0 = toWorld(0, 0), w1 = toWorld(width, height); const win = [w0[0], w0[1], w1[0], w1[1]];
    const text = s > 0.33;
    if (data.columns.length > 1) data.columns.forEach(function (c) {
      const b = c.box; if (!inView(b[0], b[1], b[0] + b[2], b[1] + b[3], win)) return;
      ctx.fillStyle = "#f8f9fa"; ctx.strokeStyle = "#dee2e6"; ctx.lineWidth = 1; roundRect(b[0], b[1], b[2], b[3], 10); ctx.fill(); ctx.stroke();
      ctx.fillStyle = "#495057"; ctx.font = "bold 14px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.fillText(c.label, b[0] + 10, Math.max(b[1], win[1] + 6 / s) + 18);
    });
    data.segments.forEach(function (g) {
      const b = g.box; if (!inView(b[0], b[1], b[0] + b[2], b[1] + b[3], win)) return;
      ctx.setLineDash([6, 4]); ctx.strokeStyle = "#adb5bd"; ctx.lineWidth = 1.2; roundRect(b[0], b[1], b[2], b[3], 7); ctx.stroke(); ctx.setLineDash([]);
      if (text) { ctx.fillStyle = "#868e96"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.fillText(g.file || g.id, b[0] + 8, b[1] + 13); }
    });
    ctx.lineWidth = 1.2;
    edges.forEach(function (e) {
      const a = hiddenBy.get(e.source), b = hiddenBy.get(e.target);
      if (a && a === b) return;
      const hit = selected && (e.from === selected || e.to === selected);
      if (!a && !b) {
        const bb = e.bbox; if (!inView(bb[0], bb[1], bb[2], bb[3], win)) return;
        ctx.strokeStyle = hit ? "#1c7ed6" : "#adb5bd"; ctx.lineWidth = hit ? 2.4 : 1.2;
        const p = e.points; ctx.beginPath(); ctx.moveTo(p[0], p[1]);
        for (let i = 2; i < p.length; i += 2) {
          if (s < 0.2) ctx.lineTo(p[i], p[i + 1]);
          else { const mid = (p[i - 1] + p[i + 1]) / 2; ctx.bezierCurveTo(p[i - 2], mid, p[i], mid, p[i], p[i + 1]); }
        }
        ctx.stroke(); return;
      }
      const from = a ? anchor(e.from, true) : [e.from.x, e.from.y + e.from.h];
      const to = b ? anchor(e.to, false) : [e.to.x, e.to.y];
      if (!inView(Math.min(from[0], to[0]), Math.min(from[1], to[1]), Math.max(from[0], to[0]), Math.max(from[1], to[1]), win)) return;
      ctx.strokeStyle = "#adb5bd"; ctx.lineWidth = 1.2; ctx.beginPath(); ctx.moveTo(from[0], from[1]);
      const mid = (from[1] + to[1]) / 2; ctx.bezierCurveTo(from[0], mid, to[0], mid, to[0], to[1]); ctx.stroke();
    });
    data.collectives.forEach(function (c) {
      const y = c.y; if (!inView(c.x0 - 60, y - 20, c.x1 + 60, y + 20, win)) return;
      const color = BRIDGE[c.op] || data.families.collective;
      ctx.strokeStyle = color; ctx.globalAlpha = 0.45; ctx.lineWidth = 12; ctx.lineCap = "round";
      if (c.op === "allgather") ctx.setLineDash([16, 9]);
      ctx.beginPath(); ctx.moveTo(c.x0 - 40, y); ctx.lineTo(c.x1 + 40, y); ctx.stroke();
      ctx.setLineDash([]); ctx.globalAlpha = 1; ctx.lineCap = "butt";
      if (text && c.nodes.length > 1) {
        ctx.fillStyle = color; ctx.font = "bold 11px system-ui, sans-serif"; ctx.textAlign = "center";
        const a = byId.get(c.nodes[0]), b = byId.get(c.nodes[1]);
        ctx.fillText((c.op === "allreduce" ? "\u03a3 " : "") + c.label, (a.x + a.w / 2 + b.x - b.w / 2) / 2, y - 9);
      }
    });
    nodes.forEach(function (n) {
      if (hiddenBy.has(n.id)) return;
      const x = n.x - n.w / 2; if (!inView(x, n.y, x + n.w, n.y + n.h, win)) return;
      const round = n.family === "io" || n.family === "collective" ? n.h / 2 : 6;
      if (n.tp) { ctx.fillStyle = "rgba(201,42,42,0.18)"; roundRect(x - 7, n.y - 7, n.w + 14, n.h + 14, round + 6); ctx.fill(); }
      ctx.fillStyle = fill(n); roundRect(x, n.y, n.w, n.h, round); ctx.fill();
      if (n.tp) { ctx.strokeStyle = TP_RING; ctx.lineWidth = 3; ctx.stroke(); }
      if (matches.has(n)) { ctx.strokeStyle = "#fcc419"; ctx.lineWidth = 4; ctx.stroke(); }
      if (n === selected) { ctx.strokeStyle = "#1c7ed6"; ctx.lineWidth = 4; ctx.stroke(); }
      else if (n === hovered) { ctx.strokeStyle = "#212529"; ctx.lineWidth = 2; ctx.stroke(); }
      if (!text) return;
      ctx.fillStyle = "#ffffff"; ctx.textAlign = "center";
      ctx.font = "bold 12px system-ui, sans-serif"; ctx.fillText(n.op, n.x, n.y + 16);
      ctx.font = "10px system-ui, sans-serif"; ctx.fillText(n.label, n.x, n.y + n.h - 8);
      if (n.tp) { ctx.fillStyle = TP_RING; roundRect(x + n.w - 16, n.y - 8, 24, 15, 4); ctx.fill(); ctx.fillStyle = "#fff"; ctx.font = "bold 10px system-ui, sans-serif"; ctx.fillText("TP", x + n.w - 4, n.y + 3); }
    });
    groups.forEach(function (g) {
      if (!inView(g.x, g.y, g.x + g.w, g.y + g.h, win)) return;
      ctx.fillStyle = "rgba(233,236,239,0.96)"; ctx.strokeStyle = "#495057"; ctx.lineWidth = 2; roundRect(g.x, g.y, g.w, g.h, 8); ctx.fill(); ctx.stroke();
      if (!text) return;
      ctx.fillStyle = "#212529"; ctx.font = "bold 13px system-ui, sans-serif"; ctx.textAlign = "center";
      ctx.fillText(g.scope + "  (" + g.members.length + " nodes, collapsed)", g.x + g.w / 2, g.y + Math.min(g.h / 2, 24) + 4);
    });
    ctx.restore();
  }

  // ------------------------------------------------------------------ picking and details
  function pick(sx, sy) {
    const p = toWorld(sx, sy);
    for (let i = groups.length - 1; i >= 0; i--) { const g = groups[i]; if (p[0] >= g.x && p[0] <= g.x + g.w && p[1] >= g.y && p[1] <= g.y + g.h) return { group: g }; }
    for (let i = nodes.length - 1; i >= 0; i--) {
      const n = nodes[i]; if (hiddenBy.has(n.id)) continue;
      if (p[0] >= n.x - n.w / 2 && p[0] <= n.x + n.w / 2 && p[1] >= n.y && p[1] <= n.y + n.h) return { node: n };
    }
    return null;
  }
  function row(table, key, value, mono) {
    const tr = el("tr"); tr.appendChild(el("td", null, key)); const td = el("td", mono ? { class: "mono" } : null, value); tr.appendChild(td); table.appendChild(tr);
  }
  function section(title, list, format) {
    if (!list.length) return;
    details.appendChild(el("h4", null, title)); const t = el("table"); list.forEach(function (x) { format(t, x); }); details.appendChild(t);
  }
  function select(n) {
    selected = n; details.textContent = "";
    if (!n) { details.style.display = "none"; redraw(); return; }
    const close = el("button", { class: "close", title: "close" }, "\u00d7"); close.addEventListener("click", function () { select(null); });
    details.appendChild(close);
    details.appendChild(el("h3", null, (n.domain ? n.domain + "::" : "") + n.op));
    details.appendChild(el("div", { class: "name" }, n.name));
    const where = el("table");
    if (n.rank !== null && n.rank !== undefined) row(where, "rank", String(n.rank));
    if (n.segment) row(where, "segment", n.segment);
    if (n.source) row(where, "created at", n.source, true);
    if (n.collective) { const c = data.collectives.find(function (x) { return x.id === n.collective; }); row(where, "bridge", c.label + " across ranks " + c.group.join(", ")); }
    details.appendChild(where);
    const tensor = function (t, x) { row(t, x.name, x.dtype + shape(x.shape), true); };
    section("inputs", n.inputs, tensor);
    section("outputs", n.outputs, tensor);
    section("weights", n.weights, function (t, x) { row(t, x.name, x.dtype + shape(x.shape) + "  " + bytes(x.bytes), true); });
    section("attributes", Object.keys(n.attrs), function (t, k) { const v = n.attrs[k]; row(t, k, typeof v === "string" ? v : JSON.stringify(v), true); });
    details.style.display = "block"; redraw();
  }
  function tip(n, sx, sy) {
    if (!n) { tooltip.style.display = "none"; return; }
    const lines = [n.op + "  " + n.name];
    n.outputs.forEach(function (x) { lines.push("\u2192 " + x.name + ": " + x.dtype + shape(x.shape)); });
    if (n.source) lines.push("at " + n.source);
    tooltip.textContent = lines.join("\n"); tooltip.style.display = "block";
    tooltip.style.left = (sx + 244) + "px"; tooltip.style.top = (sy + 62) + "px";
  }

  // ------------------------------------------------------------------ search
  let found = [];
  function runSearch(query) {
    const q = query.trim().toLowerCase(); matches = new Set(); found = []; results.textContent = "";
    if (!q) { results.style.display = "none"; redraw(); return; }
    nodes.forEach(function (n) { if (n.name.toLowerCase().indexOf(q) >= 0) { found.push({ node: n, match: "node", label: n.name, kind: n.op + (n.rank !== null ? " rank " + n.rank : "") }); matches.add(n); } });
    const seen = new Set();
    edges.forEach(function (e) {
      if (e.tensor.toLowerCase().indexOf(q) < 0 || seen.has(e.source)) return;
      seen.add(e.source); found.push({ node: e.from, match: "tensor", label: e.tensor, kind: "tensor from " + e.from.name }); matches.add(e.from);
    });
    found.slice(0, 200).forEach(function (f, i) {
      const item = el("div", { "data-node": f.node.id, "data-match": f.match }, f.label); item.appendChild(el("span", { class: "kind" }, f.kind));
      if (i === 0) item.className = "active";
      item.addEventListener("click", function () { reveal(f.node); }); results.appendChild(item);
    });
    if (!found.length) results.appendChild(el("div", null, "no node or tensor matches"));
    results.style.display = "block"; redraw();
  }
  function reveal(n) {
    const g = hiddenBy.get(n.id);
    if (g) toggleScope(g.scope);
    centerOn(n); select(n); results.style.display = "none";
  }
  search.addEventListener("input", function () { runSearch(search.value); });
  search.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && found.length) reveal(found[0].node);
    if (ev.key === "Escape") { search.value = ""; runSearch(""); }
  });

  // ------------------------------------------------------------------ mouse
  let drag = null;
  canvas.addEventListener("mousedown", function (ev) { drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y, moved: false }; canvas.classList.add("dragging"); });
  window.addEventListener("mousemove", function (ev) {
    const r = canvas.getBoundingClientRect(); const sx = ev.clientX - r.left, sy = ev.clientY - r.top;
    if (drag) {
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      view.x = drag.vx - dx / view.scale; view.y = drag.vy - dy / view.scale; tip(null); redraw(); return;
    }
    if (ev.target !== canvas) return;
    const hit = pick(sx, sy); const n = hit && hit.node ? hit.node : null;
    if (n !== hovered) { hovered = n; redraw(); }
    tip(n, sx, sy);
  });
  window.addEventListener("mouseup", function (ev) {
    if (!drag) return; const moved = drag.moved; drag = null; canvas.classList.remove("dragging");
    if (moved || ev.target !== canvas) return;
    const r = canvas.getBoundingClientRect(); const hit = pick(ev.clientX - r.left, ev.clientY - r.top);
    if (hit && hit.group) toggleScope(hit.group.scope); else select(hit ? hit.node : null);
  });
  canvas.addEventListener("mouseleave", function () { hovered = null; tip(null); redraw(); });
  canvas.addEventListener("wheel", function (ev) {
    ev.preventDefault(); const r = canvas.getBoundingClientRect(); const sx = ev.clientX - r.left, sy = ev.clientY - r.top;
    const before = toWorld(sx, sy); view.scale = Math.min(4, Math.max(0.02, view.scale * Math.exp(-ev.deltaY * 0.0015)));
    view.x = before[0] - sx / view.scale; view.y = before[1] - sy / view.scale; redraw();
  }, { passive: false });
  fitButton.addEventListener("click", function () { fit(true); });
  window.addEventListener("resize", resize);

  resize();
  if (location.hash === "#fit") fit(true); else fit(false);
  draw();
  // State for tests and scripts: where a node is on screen, and how long the page took to open.
  window.gbViewer = {
    ready: true, openMs: performance.now(), view: view, nodes: nodes, collapsed: collapsed,
    selected: function () { return selected ? selected.id : null; },
    hidden: function (id) { return hiddenBy.has(id); },
    screenOf: function (id) { const n = byId.get(id); const r = canvas.getBoundingClientRect(); return [r.left + (n.x - view.x) * view.scale, r.top + (n.y + n.h / 2 - view.y) * view.scale]; },
    drawMs: function () { const t = performance.now(); draw(); return performance.now() - t; },
    select: function (name) {
      const n = byId.get(name) || nodes.find(function (x) { return x.name === name; });
      select(n || null); draw(); return n ? n.id : null;
    },
    centerOn: function (id) { centerOn(byId.get(id)); draw(); }, fit: function (all) { fit(all); draw(); },
  };
  document.body.setAttribute("data-ready", "1");
})();
