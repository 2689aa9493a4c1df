// A prompt set's page: its aggregated circuit drawn like a graph page (features by layer and by position counted
// from the prompt's end, edges averaged over the graphs holding them, wider when in more graphs), each node's
// card linking its feature page and the graphs it appears in; the set's prompts and its ablation runs.
(async function () {
  const page = document.getElementById("set-page");
  const plot = document.getElementById("plot");
  const panel = document.getElementById("panel");
  const name = page.dataset.set;
  let data;
  try { data = await getJSON(`/api/set/${encodeURIComponent(name)}`); }
  catch (error) { page.innerHTML = `<p class="error" id="error">${escapeHTML(error.message)}</p>`; return; }
  const s = data.set;
  const nLayers = Math.max(0, ...data.nodes.filter(n => n.kind === "logit").map(n => n.layer));
  const items = data.nodes.map(n => ({ ...n, id: n.node_id }));
  let selected = null;

  function draw() {
    const { width, height } = plotSize(plot);
    const placed = layoutNodes(items, nLayers, data.tokens.length, width, height);
    const priority = i => (i.kind === "logit" ? 1e9 : i.graphs + i.score);
    const labels = placeLabels(items, placed, projection(plot, placed, nLayers), priority, 30);
    renderScene(plot, {
      placed, nLayers, tokens: data.tokens, opacity: selected ? 0.12 : 0.3, edges: data.edges, paths: [], selected,
      highlight: selected ? data.edges.filter(([a, b]) => a === selected || b === selected) : [],
      title: `prompt set ${name}: ${s.graphs} graphs · ${items.length - 1} most recurring features`,
      nodes: items.map((i, k) => ({ id: i.id, label: labels.text[k], labelSpot: labels.where[k], color: COLORS[i.kind],
        symbol: "circle", opacity: i.kind === "feature" ? 0.35 + 0.65 * (i.graphs / s.graphs) : 1, ring: null,
        hover: i.kind === "logit" ? "the prompts' targets" : `${i.feature_id}: in ${i.graphs} of ${s.graphs} graphs\n${i.label || ""}` })),
    }, select);
    plot.dataset.nodes = String(items.length);
  }

  function select(id) {
    selected = id;
    draw();
    const n = items.find(i => i.id === id);
    if (!n || n.kind !== "feature") return;
    const graphs = n.appears_in.map(slug => `<li><a class="graph" href="/graph/${encodeURIComponent(slug)}">${escapeHTML(slug)}</a></li>`);
    panel.innerHTML = `<div id="node" data-node="${escapeHTML(id)}"><h3><a href="/feature/${encodeURI(n.feature_id)}">${escapeHTML(n.feature_id)}</a></h3>
      <p>${escapeHTML(n.label || "")}</p><p>in ${n.graphs} of ${s.graphs} graphs · mean activation ${Number(n.activation).toFixed(3)}</p>
      <h4>graphs it appears in</h4><ul id="appears">${graphs.join("")}</ul></div>`;
  }

  const prompts = data.prompts.map(p => `<li>${p.slug ? `<a href="/graph/${encodeURIComponent(p.slug)}">${escapeHTML(p.prompt)}</a>` : `${escapeHTML(p.prompt)} <span class="muted">(not built)</span>`}${p.target ? ` → ${escapeHTML(visibleToken(p.target))}` : ""}</li>`);
  const ablations = data.ablations.map(a => `<li>${escapeHTML(a.features_text)}: target p ${a.change >= 0 ? "+" : ""}${Number(a.change).toFixed(4)}, flipped ${(100 * a.flipped).toFixed(0)}% of ${a.prompts} <span class="muted">${escapeHTML(a.run_id)}</span></li>`);
  document.getElementById("summary").innerHTML = `<h3>${escapeHTML(name)}</h3>
    <p>${s.graphs} of ${s.prompts} graphs built · replacement ${s.replacement.toFixed(3)} ± ${s.replacement_ci95.toFixed(3)},
    completeness ${s.completeness.toFixed(3)} ± ${s.completeness_ci95.toFixed(3)} (95%)</p>
    <h4>ablations (<code>circuitdb circuit ablate</code>)</h4><ul id="ablations">${ablations.join("") || "<li class='muted'>none yet</li>"}</ul>
    <h4>prompts</h4><ol id="prompts">${prompts.join("")}</ol>`;
  draw();
  window.addEventListener("resize", draw);
  page.dataset.ready = "1";
})();
