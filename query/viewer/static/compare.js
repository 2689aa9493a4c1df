// Two graphs of one prompt side by side (two dictionary sets, two targets, two models), nodes matched by the rule
// their difference calls for (`graph diff`: identity, decoder cosine, label words). Each is drawn as on its own
// page with the nodes carrying 80% of its top logit's influence; matched nodes are ringed; a click on a node
// selects it and its match and shows the match's rule and score. Below: scores and counts side by side, the
// largest edge changes between matched nodes and each graph's top paths.
function drawOne(div, data, matched, selected, onClick) {
  const nLayers = Math.max(0, ...data.nodes.filter(n => n.kind === "logit").map(n => n.layer));
  const items = visibleNodes(data.nodes, { nodes: 0.8, errors: "dim", pins: [], sub: false }).map(n => ({ ...n, id: n.node_id }));
  const { width, height } = plotSize(div);
  const placed = layoutNodes(items, nLayers, data.graph.tokens.length, width, height);
  const kept = keptEdges(data.edges, 0.85);
  renderScene(div, {
    placed, nLayers, tokens: data.graph.tokens, opacity: 0.25, edges: kept, paths: [], selected,
    highlight: selected ? kept.filter(([s, t]) => s === selected || t === selected) : [],
    title: `${data.graph.slug} (${data.graph.dictionaries}) · replacement ${data.scores.replacement.toFixed(3)} · completeness ${data.scores.completeness.toFixed(3)}`,
    nodes: items.map(i => ({ id: i.id, hover: hoverText(i), label: i.kind === "logit" ? shortLabel(i) : "", labelSpot: "top center",
      color: COLORS[i.kind], symbol: i.kind === "error" ? "diamond" : "circle", opacity: i.kind === "error" ? 0.35 : 1,
      ring: matched.has(i.id) ? "#000" : null })),
  }, onClick);
  div.dataset.nodes = String(items.length);
  div.dataset.shared = String(items.filter(i => matched.has(i.id)).length);
}

function table(columns, rows) {
  const head = columns.map(c => `<th>${escapeHTML(c)}</th>`).join("");
  const body = rows.map(r => `<tr>${r.map(v => `<td>${escapeHTML(v === null || v === undefined ? "—" : String(v))}</td>`).join("")}</tr>`).join("");
  return `<table class="diff-table"><tr>${head}</tr>${body}</table>`;
}

const fixed = (v, digits) => (v === null || v === undefined ? null : Number(v).toFixed(digits));

function summaryHTML(diff, names) {
  const { a, b, counts } = diff;
  const scores = table(["", "A", "B"], [
    ["graph", a.slug, b.slug], ["dictionaries", a.dictionaries, b.dictionaries], ["model", a.model, b.model],
    ["replacement", fixed(a.replacement_score, 3), fixed(b.replacement_score, 3)],
    ["completeness", fixed(a.completeness_score, 3), fixed(b.completeness_score, 3)],
    ["top logit", a.top_logit, b.top_logit], ["nodes / edges", `${a.nodes} / ${a.edges}`, `${b.nodes} / ${b.edges}`],
  ]);
  const edges = table(["source", "target", "weight A", "weight B", "change"], diff.edges.slice(0, 12).map(e =>
    [names.a.get(e.source_a) || e.source_a, names.a.get(e.target_a) || e.target_a, fixed(e.weight_a, 3), fixed(e.weight_b, 3), fixed(e.change, 3)]));
  const paths = side => side.paths.slice(0, 3).map(p =>
    `<li>${p.share.toPrecision(3)}: ${p.nodes.map(n => escapeHTML(names[side === a ? "a" : "b"].get(n) || n)).join(" → ")}</li>`).join("");
  return `<p id="shared-count">Nodes matched by <b>${escapeHTML(diff.rule)}</b>: ${counts.shared_features} features in both
    (carrying ${(100 * counts.shared_influence_a).toFixed(1)}% of A's feature influence, ${(100 * counts.shared_influence_b).toFixed(1)}% of B's),
    ${counts.only_a} only in A, ${counts.only_b} only in B; ${counts.shared_edges} edges in both.</p>
    <div id="match"><p>Click a node: its match in the other graph and the match's score.</p></div>
    <h3>Scores of the whole graphs (the plots' titles score the pruned graphs)</h3>${scores}<h3>Largest edge changes between matched nodes</h3>${edges}
    <h3>Top paths into A's ${escapeHTML(a.top_logit)}</h3><ol>${paths(a)}</ol>
    <h3>Top paths into B's ${escapeHTML(b.top_logit)}</h3><ol>${paths(b)}</ol>`;
}

function matchHTML(pair, side, id, names) {
  if (!pair) return `<p id="match-text"><b>${escapeHTML(names[side].get(id) || id)}</b>: no match in the other graph.</p>`;
  const correlation = pair.activation_correlation === null ? "" : `, activation correlation over the prompt ${fixed(pair.activation_correlation, 3)}`;
  return `<p id="match-text"><b>${escapeHTML(names.a.get(pair.node_a) || pair.node_a)}</b> (A) ↔ <b>${escapeHTML(names.b.get(pair.node_b) || pair.node_b)}</b> (B):
    ${escapeHTML(pair.match)} match, score ${fixed(pair.score, 3)}${correlation}</p>`;
}

function nodeName(n) {
  if (n.kind === "feature") return `${n.feature_id}@${n.position}`;
  if (n.kind === "error") return `error L${n.layer}@${n.position}`;
  if (n.kind === "token") return `token ${visibleToken(n.token)}@${n.position}`;
  return `logit ${visibleToken(n.token)}`;
}

function nodeNames(data) {
  return new Map(data.nodes.map(n => [n.node_id, nodeName(n)]));
}

(async function () {
  const page = document.getElementById("compare-page");
  const [first, second] = page.dataset.slugs.split(" ");
  const summary = document.getElementById("compare-summary");
  let documents, diff;
  try {
    [diff, ...documents] = await Promise.all([
      getJSON(`/api/diff/${encodeURIComponent(first)}/${encodeURIComponent(second)}`),
      ...[first, second].map(slug => getJSON(`/api/graph/${encodeURIComponent(slug)}`)),
    ]);
  } catch (error) {
    page.innerHTML = `<p class="error" id="error">${escapeHTML(error.message)}</p>`;
    return;
  }
  const byA = new Map(diff.pairs.map(p => [p.node_a, p]));
  const byB = new Map(diff.pairs.map(p => [p.node_b, p]));
  const names = { a: nodeNames(documents[0]), b: nodeNames(documents[1]) };
  const divs = [document.getElementById("plot"), document.getElementById("plot-b")];
  let selected = [null, null];
  const drawBoth = () => documents.forEach((data, i) => drawOne(divs[i], data, i ? byB : byA, selected[i], id => pick(i, id)));
  function pick(i, id) {
    const side = i ? "b" : "a";
    const pair = (i ? byB : byA).get(id);
    selected = i ? [pair ? pair.node_a : null, id] : [id, pair ? pair.node_b : null];
    document.getElementById("match").innerHTML = matchHTML(pair, side, id, names);
    drawBoth();
  }
  drawBoth();
  summary.innerHTML = summaryHTML(diff, names);
  summary.dataset.shared = String(diff.counts.shared_features);
  summary.dataset.rule = diff.rule;
  page.dataset.ready = "1";
})();
