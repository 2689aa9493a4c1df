// Graph page: nodes by prompt position (x) and layer (y); the strongest edges, blue when they excite and
// red when they inhibit, wider when stronger; hover a node to light up its edges, click it for its card;
// the slider is an edge threshold; the search box rings the nodes whose label matches.
const COLORS = { feature: "#1f77b4", error: "#aaaaaa", token: "#2ca02c", logit: "#d62728" };

function place(nodes, nLayers) {
  const cells = {};
  return nodes.map(n => {
    const y = n.kind === "token" ? -1 : n.kind === "logit" ? nLayers : n.layer;
    const key = `${n.position}:${y}`;
    const k = (cells[key] = (cells[key] || 0) + 1) - 1;
    return { x: n.position + 0.12 * (k % 7) - 0.36, y: y + 0.1 * Math.floor(k / 7) + (n.kind === "error" ? 0.3 : 0) };
  });
}

function edgeTrace(edges, at, sign, width, opacity) {
  const xs = [], ys = [];
  for (const [source, target, weight] of edges) {
    if ((weight >= 0) !== (sign > 0) || !(source in at) || !(target in at)) continue;
    xs.push(at[source].x, at[target].x, null);
    ys.push(at[source].y, at[target].y, null);
  }
  const color = sign > 0 ? "rgba(31,119,180," + opacity + ")" : "rgba(214,39,40," + opacity + ")";
  return { x: xs, y: ys, mode: "lines", type: "scatter", hoverinfo: "skip", line: { color, width }, showlegend: false };
}

(async function () {
  const page = document.getElementById("graph-page");
  const plot = document.getElementById("plot");
  const panel = document.getElementById("panel");
  const data = window.PAGE_DATA || await getJSON(`/api/graph/${encodeURIComponent(page.dataset.slug)}`);
  const { graph, nodes, edges } = data;
  const nLayers = Math.max(0, ...nodes.filter(n => n.kind === "logit").map(n => n.layer));
  const points = place(nodes, nLayers);
  const at = {};
  nodes.forEach((n, i) => (at[n.node_id] = points[i]));
  const byId = Object.fromEntries(nodes.map(n => [n.node_id, n]));
  const nodeTrace = {
    name: "nodes", x: points.map(p => p.x), y: points.map(p => p.y), customdata: nodes.map((_, i) => i),
    text: nodes.map(n => `${n.feature_id || n.kind} @${n.position} ${n.token}<br>${n.label || ""}`),
    mode: "markers", type: "scatter", hoverinfo: "text", showlegend: false,
    marker: { size: 8, color: nodes.map(n => COLORS[n.kind]), line: { width: 0, color: "#000" } },
  };
  // The slider keeps the strongest edges that carry a share of the loaded edges' total |weight| (a client-side
  // edge threshold over the stored edges); widths in three classes by |weight|.
  const total = edges.reduce((sum, e) => sum + Math.abs(e[2]), 0);
  const cumulative = [];
  edges.reduce((sum, e, i) => (cumulative[i] = sum + Math.abs(e[2]) / (total || 1)), 0);
  const keptFor = share => (share >= 1 ? edges.length : cumulative.findIndex(c => c >= share) + 1);
  let share = 0.8;
  const peak = edges.length ? Math.abs(edges[0][2]) : 1;
  function background() {
    const kept = edges.slice(0, keptFor(share));
    const classes = [[0.3, 3], [0.1, 1.5], [0, 0.6]];
    return classes.flatMap(([floor, width], i) => {
      const ceiling = i === 0 ? Infinity : classes[i - 1][0];
      const mine = kept.filter(e => Math.abs(e[2]) >= floor * peak && Math.abs(e[2]) < ceiling * peak);
      return [edgeTrace(mine, at, 1, width, 0.3), edgeTrace(mine, at, -1, width, 0.3)];
    });
  }
  const HIGHLIGHT = [6, 7], NODES = 8;
  const traces = () => [...background(), edgeTrace([], at, 1, 3, 0.9), edgeTrace([], at, -1, 3, 0.9), nodeTrace];
  const tokens = graph.tokens || [];
  const layout = {
    margin: { t: 30, l: 50, r: 10, b: 80 }, hovermode: "closest", dragmode: "pan",
    title: { text: `${graph.slug} — target: ${graph.target || "top logits"} — ${graph.n_nodes_pruned} nodes, ${data.n_edges} edges (strongest shown)`, font: { size: 13 } },
    xaxis: { tickvals: tokens.map((_, i) => i), ticktext: tokens, tickangle: -45 },
    yaxis: { title: { text: "layer" }, tickvals: [-1, ...Array.from({ length: nLayers }, (_, i) => i), nLayers],
      ticktext: ["tokens", ...Array.from({ length: nLayers }, (_, i) => String(i)), "logits"] },
  };
  await Plotly.newPlot(plot, traces(), layout, { responsive: true, scrollZoom: true });

  function incident(nodeId) {
    return edges.filter(([s, t]) => s === nodeId || t === nodeId).slice(0, 12);
  }
  plot.on("plotly_hover", event => {
    const node = nodes[event.points[0].customdata];
    if (node === undefined) return;
    const mine = incident(node.node_id);
    Plotly.restyle(plot, { x: [edgeTrace(mine, at, 1, 3, 0.9).x, edgeTrace(mine, at, -1, 3, 0.9).x],
      y: [edgeTrace(mine, at, 1, 3, 0.9).y, edgeTrace(mine, at, -1, 3, 0.9).y] }, HIGHLIGHT);
  });
  plot.on("plotly_click", async event => {
    const node = nodes[event.points[0].customdata];
    if (node === undefined) return;
    const lines = incident(node.node_id).map(([s, t, w]) => {
      const other = byId[s === node.node_id ? t : s];
      const arrow = s === node.node_id ? "→" : "←";
      return `<li>${arrow} ${w.toFixed(3)} ${escapeHTML(other.feature_id || other.kind)} @${other.position} ${escapeHTML(other.token)}</li>`;
    });
    panel.innerHTML = `<div id="node" data-node="${escapeHTML(node.node_id)}"><h3>${escapeHTML(node.feature_id || node.kind)}</h3>
      <p>@${node.position} ${escapeHTML(node.token)} · influence ${Number(node.influence).toFixed(4)}</p>
      <button id="select">add to group</button>
      <ul>${lines.join("")}</ul></div><div id="card"></div>`;
    document.getElementById("select").addEventListener("click", () => {
      if (!selected.includes(node.node_id)) selected.push(node.node_id);
      showGroups();
    });
    if (node.kind === "feature" && window.PAGE_DATA) {  // a file opened from disk: what the graph holds
      document.getElementById("card").innerHTML = `<h3>${escapeHTML(node.feature_id)}</h3><p>${escapeHTML(node.label)}</p>`;
    } else if (node.kind === "feature") {
      try {
        document.getElementById("card").innerHTML = featureCard(await getJSON(`/api/feature/${encodeURI(node.feature_id)}`));
      } catch (error) {
        document.getElementById("card").innerHTML = `<p class="muted">${escapeHTML(error.message)}</p>`;
      }
    }
  });

  const controls = document.getElementById("controls");
  controls.innerHTML = `<label>edges carrying <input id="edges" type="range" min="0.05" max="1" step="0.01" value="${share}">
    <span id="edges-share">${Math.round(100 * share)}%</span> of the weight (<span id="edges-count">${keptFor(share)}</span> edges)</label>
    <br><input id="search" placeholder="search labels" size="30">`;
  document.getElementById("edges").addEventListener("input", event => {
    share = Number(event.target.value);
    document.getElementById("edges-share").textContent = `${Math.round(100 * share)}%`;
    document.getElementById("edges-count").textContent = keptFor(share);
    const lines = background();
    Plotly.restyle(plot, { x: lines.map(t => t.x), y: lines.map(t => t.y) }, [0, 1, 2, 3, 4, 5]);
  });
  document.getElementById("search").addEventListener("input", event => {
    const needle = event.target.value.toLowerCase();
    const hit = nodes.map(n => needle && (n.label || "").toLowerCase().includes(needle));
    Plotly.restyle(plot, { "marker.line.width": [hit.map(h => (h ? 3 : 0))], "marker.size": [hit.map(h => (h ? 14 : 8))] }, [NODES]);
  });
  // Supernodes: nodes added to the group, then named and saved (the viewer's only write); saved ones
  // come back with the graph, so they survive a reload.
  const selected = [];
  let groups = data.supernodes || [];
  const groupsBox = document.createElement("div");
  groupsBox.id = "groups";
  controls.appendChild(groupsBox);
  function showGroups() {
    const saved = groups.map(g => `<li class="supernode"><b>${escapeHTML(g.name)}</b>: ${g.node_ids.map(escapeHTML).join(", ")}</li>`);
    const saving = window.PAGE_DATA ? "" : `<input id="group-name" placeholder="supernode name"> <button id="save-group">group ${selected.length}</button>`;
    groupsBox.innerHTML = `<h4>supernodes</h4><ul>${saved.join("")}</ul>
      <p>selected: <span id="selected">${selected.map(escapeHTML).join(", ")}</span></p>${saving}`;
    const button = document.getElementById("save-group");
    if (button) button.addEventListener("click", saveGroup);
  }
  async function saveGroup() {
    const name = document.getElementById("group-name").value;
    const response = await fetch(`/api/graph/${encodeURIComponent(graph.slug)}/supernodes`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name, node_ids: selected }) });
    const body = await response.json();
    if (!response.ok) { groupsBox.insertAdjacentHTML("beforeend", `<p class="muted">${escapeHTML(body.error)}</p>`); return; }
    groups = body.supernodes;
    selected.length = 0;
    showGroups();
  }
  showGroups();

  plot.dataset.nodes = String(nodeTrace.x.length);
  plot.dataset.ready = "1";
})();
