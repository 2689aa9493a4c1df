// Two graphs side by side (one prompt: two dictionary sets, two targets): each drawn as on its own page with
// the nodes carrying 80% of its top logit's influence; nodes both graphs hold (the same feature, error or
// token at the same position) ringed in both; a click selects a node in both.
function nodeKey(n) {
  return n.kind === "feature" ? `${n.feature_id}@${n.position}` : n.kind === "logit" ? `logit:${n.token}` : n.node_id;
}

async function drawOne(div, data, shared, selected) {
  const nLayers = Math.max(0, ...data.nodes.filter(n => n.kind === "logit").map(n => n.layer));
  const items = visibleNodes(data.nodes, { nodes: 0.8, errors: "dim", pins: [], sub: false }).map(n => ({ ...n, id: n.node_id }));
  const width = Math.max(200, div.clientWidth - MARGIN.l - MARGIN.r);
  const height = Math.max(200, div.clientHeight - MARGIN.t - MARGIN.b);
  const placed = layoutNodes(items, nLayers, data.graph.tokens.length, width, height);
  const at = placed.at;
  const isShared = items.map(i => shared.has(nodeKey(i)));
  const nodes = {
    name: "nodes", type: "scatter", mode: "markers", hoverinfo: "text", showlegend: false,
    x: items.map(i => at[i.id].x), y: items.map(i => at[i.id].y), customdata: items.map(nodeKey), hovertext: items.map(hoverText),
    marker: { size: placed.size, color: items.map(i => COLORS[i.kind]), opacity: items.map(i => (i.kind === "error" ? 0.35 : 1)),
      symbol: items.map(i => (i.kind === "error" ? "diamond" : "circle")),
      line: { color: items.map(i => (nodeKey(i) === selected ? "#ff7f0e" : "#000")),
        width: items.map((i, k) => (nodeKey(i) === selected ? 3 : isShared[k] ? 1.8 : 0)) } },
  };
  const kept = keptEdges(data.edges, 0.85).filter(([s, t]) => s in at && t in at);
  const layout = { margin: MARGIN, hovermode: "closest", dragmode: "pan", ...axes(data.graph, nLayers, placed),
    title: { text: `${escapeHTML(data.graph.slug)} (${escapeHTML(data.graph.dictionaries)}) · replacement ${data.scores.replacement.toFixed(3)} · completeness ${data.scores.completeness.toFixed(3)}`, font: { size: 12 } } };
  await Plotly.react(div, [...edgeTraces(kept, at, 0.25), nodes], layout, { responsive: true, scrollZoom: true, displaylogo: false });
  div.dataset.nodes = String(items.length);
  div.dataset.shared = String(isShared.filter(Boolean).length);
  return items;
}

(async function () {
  const page = document.getElementById("compare-page");
  const [first, second] = page.dataset.slugs.split(" ");
  const summary = document.getElementById("compare-summary");
  let documents;
  try {
    documents = await Promise.all([first, second].map(slug => getJSON(`/api/graph/${encodeURIComponent(slug)}`)));
  } catch (error) {
    page.innerHTML = `<p class="error" id="error">${escapeHTML(error.message)}</p>`;
    return;
  }
  const divs = [document.getElementById("plot"), document.getElementById("plot-b")];
  const keysOf = data => new Set(data.nodes.filter(n => n.kind === "feature" || n.kind === "error").map(nodeKey));
  const [a, b] = documents.map(keysOf);
  const shared = new Set([...a].filter(key => b.has(key)));
  let selected = null;
  const drawBoth = () => Promise.all(documents.map((data, i) => drawOne(divs[i], data, shared, selected)));
  await drawBoth();
  const sameprompt = documents[0].graph.prompt === documents[1].graph.prompt;
  summary.innerHTML = `<p id="shared-count">${shared.size} nodes in both graphs (features and errors at the same
    position), ${a.size - shared.size} only in ${escapeHTML(first)}, ${b.size - shared.size} only in ${escapeHTML(second)}
    ${sameprompt ? "" : " · <b>the prompts differ</b>"}</p>`;
  summary.dataset.shared = String(shared.size);
  divs.forEach(div => div.on("plotly_click", event => { selected = event.points[0].customdata; drawBoth(); }));
  page.dataset.ready = "1";
})();
