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

function axes(graph, nLayers, placed) {
  const tokens = graph.tokens || [];
  return {
    xaxis: { range: [0, placed.slots], tickvals: placed.ticks, ticktext: tokens.map(visibleToken), tickangle: -45,
      showgrid: false, zeroline: false, fixedrange: false },
    yaxis: { range: [-0.7, nLayers + 1.7], zeroline: false,
      tickvals: Array.from({ length: nLayers + 2 }, (_, i) => i),
      ticktext: ["tokens", ...Array.from({ length: nLayers }, (_, i) => `L${i}`), "logits"] },
  };
}

function edgeLines(edges, at, sign) {
  const xs = [], ys = [];
  for (const [source, target, weight] of edges) {
    if ((weight >= 0) !== (sign > 0) || !(source in at) || !(target in at)) continue;
    xs.push(at[source].x, at[target].x, null);
    ys.push(at[source].y, at[target].y, null);
  }
  return { x: xs, y: ys };
}

function edgeTrace(edges, at, sign, width, opacity, name) {
  const color = sign > 0 ? `rgba(31,119,180,${opacity})` : `rgba(214,39,40,${opacity})`;
  return { ...edgeLines(edges, at, sign), name, mode: "lines", type: "scatter", hoverinfo: "skip",
    line: { color, width }, showlegend: false };
}

// Edges of three width classes (by |weight| relative to the strongest drawn), excitatory blue, inhibitory red.
function edgeTraces(edges, at, opacity) {
  const peak = Math.max(1e-12, ...edges.map(e => Math.abs(e[2])));
  const classes = [[0.3, Infinity, 3], [0.1, 0.3, 1.6], [0, 0.1, 0.7]];
  return classes.flatMap(([low, high, width]) => {
    const mine = edges.filter(e => Math.abs(e[2]) >= low * peak && Math.abs(e[2]) < high * peak);
    return [edgeTrace(mine, at, 1, width, opacity, "edges"), edgeTrace(mine, at, -1, width, opacity, "edges")];
  });
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
  if (item.kind === "supernode") return `supernode ${escapeHTML(item.name)}<br>${item.members.length} nodes`;
  if (item.kind === "error") return `MLP error, layer ${item.layer}, position ${item.position} (${escapeHTML(visibleToken(item.token))})`;
  if (item.kind === "token") return `token ${escapeHTML(visibleToken(item.token))} @${item.position}`;
  if (item.kind === "logit") return `logit ${escapeHTML(visibleToken(item.token))} p=${Number(item.activation).toFixed(3)}`;
  return `${escapeHTML(item.feature_id)} @${item.position} ${escapeHTML(visibleToken(item.token))}<br>${escapeHTML(item.label || "")}<br>influence ${Number(item.score).toFixed(4)}`;
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
const LABEL_SPOTS = [["top center", 0, -1], ["bottom center", 0, 1], ["middle right", 1, 0], ["middle left", -1, 0]];
function placeLabels(items, placed, widthPx, heightPx, nLayers, wanted, most) {
  const toPx = p => ({ x: (p.x / placed.slots) * widthPx, y: ((nLayers + 1.7 - p.y) / (nLayers + 2.4)) * heightPx });
  const boxes = [];
  const text = items.map(() => ""), where = items.map(() => "top center");
  const order = items.map((item, k) => k).filter(k => wanted(items[k]) > 0).sort((a, b) => wanted(items[b]) - wanted(items[a]));
  let placedCount = 0;
  for (const k of order) {
    if (placedCount >= most) break;
    const label = shortLabel(items[k]);
    if (!label) continue;
    const centre = toPx(placed.at[items[k].id]);
    const w = 5.2 * label.length + 4, h = 12, gap = placed.size / 2 + 1;
    for (const [spot, dx, dy] of LABEL_SPOTS) {
      const cx = centre.x + dx * (gap + w / 2), cy = centre.y + dy * (gap + h / 2);
      const box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2];
      if (box[0] < -20 || box[2] > widthPx + 40) continue;
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

// Pairs of drawn node markers whose boxes overlap, measured on what the browser laid out (plotly's SVG
// points of every trace with more than one point): what the tests and the viewer benchmark count.
function drawnOverlaps(div) {
  const traces = [...div.querySelectorAll(".scatterlayer .trace")].filter(t => t.querySelectorAll(".points path.point").length > 1);
  const boxes = traces.flatMap(t => [...t.querySelectorAll(".points path.point")].map(p => p.getBoundingClientRect()));
  let overlaps = 0;
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) overlaps++;
    }
  }
  return overlaps;
}
