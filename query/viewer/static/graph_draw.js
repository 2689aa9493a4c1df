// Drawing a graph: one row per layer (tokens below, logits above), one column per prompt position; each
// (row, position) cell lays its nodes side by side (in sub-rows when a cell is crowded), and each column is
// as wide as its most crowded cell, so no two nodes overlap at any size. Used by the graph and compare pages.
const COLORS = { feature: "#1f77b4", error: "#9a9a9a", token: "#2ca02c", logit: "#d62728", supernode: "#9467bd" };
const MARGIN = { t: 34, l: 64, r: 12, b: 90 };
const MIN_SPACING_PX = 9;

function rowOf(node, nLayers) {
  if (node.kind === "token") return 0;
  if (node.kind === "logit") return nLayers + 1;
  return node.layer + 1;
}

// items: [{id, kind, layer, position, score}] → {at: id → {x, y}, size (px), slots, ticks}
function layoutNodes(items, nLayers, nPositions, widthPx, heightPx) {
  const rows = nLayers + 2;
  const cells = new Map();
  for (const item of items) {
    const key = `${rowOf(item, nLayers)}:${item.position}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(item);
  }
  for (const members of cells.values()) members.sort((a, b) => (a.kind === "error") - (b.kind === "error") || b.score - a.score);
  const rowPx = heightPx / rows;
  let subRows = 1, widths, slots;
  for (;;) {
    widths = new Array(nPositions).fill(1);
    for (const [key, members] of cells) {
      const position = Number(key.split(":")[1]);
      widths[position] = Math.max(widths[position], Math.ceil(members.length / subRows));
    }
    slots = widths.reduce((a, b) => a + b, 0) + nPositions;  // a slot's gap between columns
    const fitsWidth = widthPx / slots >= MIN_SPACING_PX;
    const fitsHeight = (0.8 * rowPx) / (subRows + 1) >= MIN_SPACING_PX;
    if (fitsWidth || !fitsHeight) break;
    subRows += 1;
  }
  const starts = [];
  widths.reduce((start, width, i) => ((starts[i] = start), start + width + 1), 0.5);
  const at = {};
  for (const [key, members] of cells) {
    const [row, position] = key.split(":").map(Number);
    const perRow = Math.ceil(members.length / subRows);
    const usedRows = Math.ceil(members.length / perRow);
    members.forEach((item, k) => {
      const sub = Math.floor(k / perRow), column = k % perRow;
      const x = starts[position] + (widths[position] - perRow) / 2 + column + 0.5;
      const y = row + (usedRows > 1 ? (sub - (usedRows - 1) / 2) * (0.8 / subRows) : 0);
      at[item.id] = { x, y };
    });
  }
  const spacing = Math.min(widthPx / slots, (0.8 * rowPx) / subRows, rowPx);
  const size = Math.max(3, Math.min(13, 0.8 * spacing));
  const ticks = widths.map((width, i) => starts[i] + width / 2);
  return { at, size, slots, ticks };
}

// Drawing is plain SVG (plotly.js takes over a second to load on a 2-core machine before it draws anything):
// one <path> per edge class, one element per node (`.node`, `data-id`, a <title> for hover), labels as
// <text>; the wheel zooms about the pointer and a drag pans, kept across redraws.
const SVG_NS = "http://www.w3.org/2000/svg";

function plotSize(div) {
  return { width: Math.max(200, div.clientWidth - MARGIN.l - MARGIN.r), height: Math.max(200, div.clientHeight - MARGIN.t - MARGIN.b) };
}

function projection(div, placed, nLayers) {
  const { width, height } = plotSize(div);
  const x = value => MARGIN.l + (value / placed.slots) * width;
  const y = value => MARGIN.t + ((nLayers + 1.7 - value) / (nLayers + 2.4)) * height;
  return { x, y, width, height };
}

function edgePath(edges, at, to) {
  return edges.filter(([s, t]) => s in at && t in at)
    .map(([s, t]) => `M${to.x(at[s].x).toFixed(1)} ${to.y(at[s].y).toFixed(1)}L${to.x(at[t].x).toFixed(1)} ${to.y(at[t].y).toFixed(1)}`).join("");
}

// Edges in three width classes (by |weight| relative to the strongest drawn), excitatory blue, inhibitory red.
function edgeLayers(edges, at, to, opacity) {
  const peak = Math.max(1e-12, ...edges.map(e => Math.abs(e[2])));
  const classes = [[0, 0.1, 0.7], [0.1, 0.3, 1.6], [0.3, Infinity, 3]];
  return classes.flatMap(([low, high, width]) => [1, -1].map(sign => {
    const mine = edges.filter(e => (e[2] >= 0) === (sign > 0) && Math.abs(e[2]) >= low * peak && Math.abs(e[2]) < high * peak);
    const color = sign > 0 ? `rgba(31,119,180,${opacity})` : `rgba(214,39,40,${opacity})`;
    return `<path class="edges" d="${edgePath(mine, at, to)}" stroke="${color}" stroke-width="${width}" fill="none"/>`;
  }));
}

function marker(node, x, y, r) {
  const style = `fill="${node.color}" fill-opacity="${node.opacity}" stroke="${node.ring || "none"}" stroke-width="${node.ring ? 2.5 : 0}"`;
  const attributes = `class="node${node.ring ? " ringed" : ""}" data-id="${escapeHTML(node.id)}" data-label="${escapeHTML(node.label || "")}" ${style}`;
  const title = `<title>${escapeHTML(node.hover)}</title>`;
  if (node.symbol === "square") return `<rect ${attributes} x="${x - r}" y="${y - r}" width="${2 * r}" height="${2 * r}">${title}</rect>`;
  if (node.symbol === "diamond") return `<path ${attributes} d="M${x} ${y - r}L${x + r} ${y}L${x} ${y + r}L${x - r} ${y}Z">${title}</path>`;
  return `<circle ${attributes} cx="${x}" cy="${y}" r="${r}">${title}</circle>`;
}

// Where a label may go, in the order `placeLabels` tries: direction from its node (dx, dy) and text anchor.
const LABEL_SPOTS = { "top center": [0, -1, "middle"], "bottom center": [0, 1, "middle"], "middle right": [1, 0, "start"], "middle left": [-1, 0, "end"] };
function labelText(node, x, y, r) {
  if (!node.label) return "";
  const [dx, dy, anchor] = LABEL_SPOTS[node.labelSpot];
  const lx = x + dx * (r + 2), ly = y + (dy < 0 ? -r - 3 : dy > 0 ? r + 10 : 3);
  return `<text x="${lx.toFixed(1)}" y="${ly.toFixed(1)}" text-anchor="${anchor}" class="node-label">${escapeHTML(node.label)}</text>`;
}

// scene: {placed, nLayers, tokens, title, edges: [[s, t, w]], opacity, highlight: [[s, t, w]], paths: [[s, t]],
// nodes: [{id, symbol, color, opacity, ring, label, labelSpot, hover}], selected: id}
function renderScene(div, scene, onClick) {
  const to = projection(div, scene.placed, scene.nLayers);
  const at = scene.placed.at, r = scene.placed.size / 2;
  const rows = Array.from({ length: scene.nLayers + 2 }, (_, i) => i);
  const rowName = i => (i === 0 ? "tokens" : i === scene.nLayers + 1 ? "logits" : `L${i - 1}`);
  const grid = rows.map(i => `<line x1="${MARGIN.l}" x2="${MARGIN.l + to.width}" y1="${to.y(i)}" y2="${to.y(i)}" class="grid"/>` +
    `<text x="${MARGIN.l - 6}" y="${to.y(i) + 3}" text-anchor="end" class="tick">${rowName(i)}</text>`).join("");
  const ticks = scene.placed.ticks.map((x, i) => {
    const px = to.x(x), py = MARGIN.t + to.height + 14;
    return `<text x="${px}" y="${py}" text-anchor="end" transform="rotate(-45 ${px} ${py})" class="tick token-tick">${escapeHTML(visibleToken((scene.tokens || [])[i]))}</text>`;
  }).join("");
  const highlight = [1, -1].map(sign => {
    const mine = scene.highlight.filter(e => (e[2] >= 0) === (sign > 0));
    return `<path class="edges selected" d="${edgePath(mine, at, to)}" stroke="${sign > 0 ? "rgba(31,119,180,0.95)" : "rgba(214,39,40,0.95)"}" stroke-width="2.5" fill="none"/>`;
  }).join("");
  const paths = `<path class="paths" d="${edgePath(scene.paths, at, to)}" stroke="rgba(255,127,14,0.85)" stroke-width="3.5" fill="none"/>`;
  const nodes = scene.nodes.map(n => marker(n, to.x(at[n.id].x), to.y(at[n.id].y), r)).join("");
  const labels = scene.nodes.map(n => labelText(n, to.x(at[n.id].x), to.y(at[n.id].y), r)).join("");
  const selected = scene.selected && at[scene.selected]
    ? `<circle class="selection" cx="${to.x(at[scene.selected].x)}" cy="${to.y(at[scene.selected].y)}" r="${r * 2.2}" fill="none" stroke="#ff7f0e" stroke-width="3"/>` : "";
  const view = div._view || (div._view = { k: 1, x: 0, y: 0 });
  div.innerHTML = `<svg xmlns="${SVG_NS}" width="${div.clientWidth}" height="${div.clientHeight}" class="graph-svg">
    <text x="${div.clientWidth / 2}" y="18" text-anchor="middle" class="title">${escapeHTML(scene.title)}</text>
    <g class="viewport" transform="translate(${view.x} ${view.y}) scale(${view.k})">${grid}${ticks}${edgeLayers(scene.edges, at, to, scene.opacity).join("")}
    ${paths}${highlight}${nodes}${labels}${selected}</g></svg>`;
  if (!div._wired) wire(div, onClick);
}

function wire(div, onClick) {
  div._wired = true;
  const apply = () => div.querySelector(".viewport").setAttribute("transform", `translate(${div._view.x} ${div._view.y}) scale(${div._view.k})`);
  div.addEventListener("click", event => {
    const node = event.target.closest("[data-id]");
    if (node && !div._dragged) onClick(node.dataset.id, event);
  });
  div.addEventListener("wheel", event => {
    event.preventDefault();
    const box = div.getBoundingClientRect(), v = div._view;
    const px = event.clientX - box.left, py = event.clientY - box.top;
    const k = Math.min(40, Math.max(0.5, v.k * Math.exp(-event.deltaY / 400)));
    v.x = px - ((px - v.x) * k) / v.k;
    v.y = py - ((py - v.y) * k) / v.k;
    v.k = k;
    apply();
  }, { passive: false });
  div.addEventListener("mousedown", event => {
    const start = { x: event.clientX, y: event.clientY, vx: div._view.x, vy: div._view.y };
    div._dragged = false;
    const move = e => {
      if (Math.abs(e.clientX - start.x) + Math.abs(e.clientY - start.y) > 3) div._dragged = true;
      div._view.x = start.vx + e.clientX - start.x;
      div._view.y = start.vy + e.clientY - start.y;
      apply();
    };
    const up = () => { window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up); };
    window.addEventListener("mousemove", move);
    window.addEventListener("mouseup", up);
  });
  div.addEventListener("dblclick", () => { div._view = { k: 1, x: 0, y: 0 }; apply(); });
}

// Supernodes: members replaced by one node (in the cell of their highest layer and last position), edges
// to members summed onto it, edges between members dropped.
function mergeGroups(items, edges, groups) {
  const owner = {};
  const byId = Object.fromEntries(items.map(item => [item.id, item]));
  const merged = [];
  for (const [name, ...members] of groups) {
    const present = members.filter(id => id in byId && !(id in owner));
    if (present.length === 0) continue;
    const id = `group:${name}`;
    present.forEach(member => (owner[member] = id));
    const parts = present.map(member => byId[member]);
    merged.push({ id, kind: "supernode", name, members: present,
      layer: Math.max(...parts.map(p => (p.kind === "logit" ? 1e9 : p.kind === "token" ? -1 : p.layer))),
      position: Math.max(...parts.map(p => p.position)), score: parts.reduce((sum, p) => sum + (p.score || 0), 0),
      label: name });
  }
  merged.forEach(group => { if (group.layer === 1e9) group.kind = "logit"; });
  const kept = items.filter(item => !(item.id in owner)).concat(merged);
  const sums = new Map();
  for (const [source, target, weight, score] of edges) {
    const s = owner[source] || source, t = owner[target] || target;
    if (s === t) continue;
    const key = `${s}\u0000${t}`;
    const seen = sums.get(key);
    if (seen) { seen[2] += weight; seen[3] += score || 0; } else sums.set(key, [s, t, weight, score || 0]);
  }
  return { items: kept, edges: [...sums.values()], owner };
}

function shortLabel(item) {
  if (item.kind === "supernode") return `▣ ${item.name}`;
  if (item.kind === "logit") return `${visibleToken(item.token)} ${(100 * (item.activation || 0)).toFixed(1)}%`;
  if (item.kind === "token") return "";
  if (item.kind === "error") return "";
  const text = item.label || item.feature_id || item.id;
  return text.length > 22 ? text.slice(0, 21) + "…" : text;
}

function hoverText(item) {
  if (item.kind === "supernode") return `supernode ${item.name}: ${item.members.length} nodes`;
  if (item.kind === "error") return `MLP error, layer ${item.layer}, position ${item.position} (${visibleToken(item.token)})`;
  if (item.kind === "token") return `token ${visibleToken(item.token)} @${item.position}`;
  if (item.kind === "logit") return `logit ${visibleToken(item.token)} p=${Number(item.activation).toFixed(3)}`;
  return `${item.feature_id} @${item.position} ${visibleToken(item.token)}\n${item.label || ""}\ninfluence ${Number(item.score).toFixed(4)}`;
}

// Features and errors carrying `share` of the chosen logit's influence (largest first), always the pinned.
function visibleNodes(nodes, state) {
  const pinned = new Set(state.pins);
  const inner = nodes.filter(n => n.kind === "feature" || n.kind === "error").sort((a, b) => b.score - a.score);
  const total = inner.reduce((sum, n) => sum + Math.max(0, n.score), 0) || 1;
  const shown = new Set();
  let carried = 0;
  for (const n of inner) {
    if (carried / total >= state.nodes) break;
    shown.add(n.node_id);
    carried += Math.max(0, n.score);
  }
  return nodes.filter(n => {
    if (n.kind === "token" || n.kind === "logit") return true;
    if (n.kind === "error" && state.errors === "hide") return false;
    if (state.sub) return pinned.has(n.node_id);
    return shown.has(n.node_id) || pinned.has(n.node_id);
  });
}

function keptEdges(edges, share) {
  const total = edges.reduce((sum, e) => sum + Math.abs(e[3] || 0), 0) || 1;
  let carried = 0, count = 0;
  for (const e of edges) {
    if (carried / total >= share) break;
    carried += Math.abs(e[3] || 0);
    count += 1;
  }
  return edges.slice(0, Math.max(count, 1));
}

// Labels that do not cover one another: candidates in priority order (logits, pinned, supernodes, then the
// features of most influence), each tried above, below, right and left of its node; one that fits nowhere
// is left to the hover text.
// `to` is the drawing's `projection`.
function placeLabels(items, placed, to, wanted, most) {
  const boxes = [];
  const text = items.map(() => ""), where = items.map(() => "top center");
  const order = items.map((item, k) => k).filter(k => wanted(items[k]) > 0).sort((a, b) => wanted(items[b]) - wanted(items[a]));
  let placedCount = 0;
  for (const k of order) {
    if (placedCount >= most) break;
    const label = shortLabel(items[k]);
    if (!label) continue;
    const at = placed.at[items[k].id], centre = { x: to.x(at.x), y: to.y(at.y) };
    const w = 5.2 * label.length + 4, h = 12, gap = placed.size / 2 + 1;
    for (const [spot, [dx, dy]] of Object.entries(LABEL_SPOTS)) {
      const cx = centre.x + dx * (gap + w / 2), cy = centre.y + dy * (gap + h / 2);
      const box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2];
      if (box[0] < MARGIN.l - 20 || box[2] > MARGIN.l + to.width + 40) continue;
      if (boxes.some(b => b[0] < box[2] && box[0] < b[2] && b[1] < box[3] && box[1] < b[3])) continue;
      boxes.push(box);
      text[k] = label;
      where[k] = spot;
      placedCount += 1;
      break;
    }
  }
  return { text, where };
}

// Pairs of drawn node markers whose boxes overlap, measured on what the browser laid out (the `.node`
// elements' boxes, not our layout's arithmetic): what the tests and the viewer benchmark count.
function drawnOverlaps(div) {
  const boxes = [...div.querySelectorAll(".node")].map(node => node.getBoundingClientRect());
  let overlaps = 0;
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) overlaps++;
    }
  }
  return overlaps;
}
