// Two graphs side by side (one prompt: two dictionary sets, two targets): each drawn as on its own page with
// the nodes carrying 80% of its top logit's influence; nodes both graphs hold (the same feature, error or
// token at the same position) ringed in both; a click on a node selects it in both.
function nodeKey(n) {
  return n.kind === "feature" ? `${n.feature_id}@${n.position}` : n.kind === "logit" ? `logit:${n.token}` : n.node_id;
}

function drawOne(div, data, shared, selected, onClick) {
  const nLayers = Math.max(0, ...data.nodes.filter(n => n.kind === "logit").map(n => n.layer));
  const items = visibleNodes(data.nodes, { nodes: 0.8, errors: "dim", pins: [], sub: false }).map(n => ({ ...n, id: n.node_id }));
  const { width, height } = plotSize(div);
  const placed = layoutNodes(items, nLayers, data.graph.tokens.length, width, height);
  const kept = keptEdges(data.edges, 0.85);
  const chosen = items.find(i => nodeKey(i) === selected);
  renderScene(div, {
    placed, nLayers, tokens: data.graph.tokens, opacity: 0.25, edges: kept, paths: [], selected: chosen && chosen.id,
    highlight: chosen ? kept.filter(([s, t]) => s === chosen.id || t === chosen.id) : [],
    title: `${data.graph.slug} (${data.graph.dictionaries}) · replacement ${data.scores.replacement.toFixed(3)} · completeness ${data.scores.completeness.toFixed(3)}`,
    nodes: items.map(i => ({ id: i.id, hover: hoverText(i), label: i.kind === "logit" ? shortLabel(i) : "", labelSpot: "top center",
      color: COLORS[i.kind], symbol: i.kind === "error" ? "diamond" : "circle", opacity: i.kind === "error" ? 0.35 : 1,
      ring: shared.has(nodeKey(i)) ? "#000" : null })),
  }, id => onClick(nodeKey(items.find(i => i.id === id))));
  div.dataset.nodes = String(items.length);
  div.dataset.shared = String(items.filter(i => shared.has(nodeKey(i))).length);
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
  const drawBoth = () => documents.forEach((data, i) => drawOne(divs[i], data, shared, selected, pick));
  function pick(key) { selected = key; drawBoth(); }
  drawBoth();
  const sameprompt = documents[0].graph.prompt === documents[1].graph.prompt;
  summary.innerHTML = `<p id="shared-count">${shared.size} nodes in both graphs (features and errors at the same
    position), ${a.size - shared.size} only in ${escapeHTML(first)}, ${b.size - shared.size} only in ${escapeHTML(second)}
    ${sameprompt ? "" : " · <b>the prompts differ</b>"}</p>`;
  summary.dataset.shared = String(shared.size);
  page.dataset.ready = "1";
})();
