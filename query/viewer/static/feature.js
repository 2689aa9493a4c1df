// Feature page: statistics, activation histogram, output logits, neighbours and highlighted exemplars.
// A token of only whitespace that the feature fires on is drawn as its glyph (␣ ↵ ⇥), or its highlight
// would have nothing to colour.
function tokenSpan(token, value, peak) {
  const shown = value > 0 && !String(token).trim() ? `<span class="whitespace">${escapeHTML(visibleToken(token))}</span>${token.includes("\n") ? "\n" : ""}` : escapeHTML(token);
  return `<span style="background:${heat(value, peak)}" title="${Number(value).toFixed(3)}">${shown}</span>`;
}
(async function () {
  const main = document.getElementById("feature-page");
  let f;
  try {
    f = await getJSON(`/api/feature/${encodeURI(main.dataset.feature)}`);
  } catch (error) {
    main.innerHTML = `<p id="error">${escapeHTML(error.message)}</p>`;
    return;
  }
  const neighbours = (f.neighbours || []).map((id, i) =>
    `<a href="/feature/${encodeURI(id)}">${escapeHTML(id)}</a> (${Number((f.neighbour_cosines || [])[i]).toFixed(2)})`);
  const exemplars = f.exemplars.map(e => {
    const peak = Math.max(...e.values, 1e-9);
    const spans = e.tokens.map((t, i) => tokenSpan(t, e.values[i], f.max_act || peak));
    return `<div class="exemplar" data-kind="${e.kind}">${escapeHTML(e.kind)} ${e.kind === "top" ? e.rank : "group " + e.group}: ${spans.join("")}</div>`;
  });
  main.innerHTML = `${featureCard(f)}
    <p>suppresses: ${(f.bottom_logits || []).slice(0, 8).map(escapeHTML).join(", ")}</p>
    <p>neighbours: ${neighbours.join(", ")}</p>
    <p>in graphs: ${(f.graphs || []).map(g => `<a class="graph" href="/graph/${encodeURIComponent(g)}">${escapeHTML(g)}</a>`).join(", ") || "none"}</p>
    <div id="histogram" style="height:220px"></div>
    <h3>Try your text</h3><textarea id="text" rows="2" cols="80"></textarea> <button id="run">run</button>
    <div id="text-result" class="exemplar"></div>
    <h3>Exemplars</h3><div id="exemplars">${exemplars.join("")}</div>`;
  document.getElementById("run").addEventListener("click", async () => {
    const out = document.getElementById("text-result");
    let body;
    try {
      body = await postJSON(`/api/feature/${encodeURI(f.feature_id)}/text`, { text: document.getElementById("text").value });
    } catch (error) { out.textContent = error.message; return; }
    out.innerHTML = body.tokens.map((t, i) => tokenSpan(t, body.values[i], f.max_act || 1)).join("");
    out.dataset.values = JSON.stringify(body.values);
  });
  const counts = f.histogram || [];
  const width = (f.max_act || 1) / Math.max(counts.length, 1);
  Plotly.newPlot("histogram", [{ type: "bar", x: counts.map((_, i) => (i + 0.5) * width), y: counts }],
    { margin: { t: 10 }, xaxis: { title: { text: "activation" } }, yaxis: { title: { text: "tokens" }, type: "log", dtick: 1 } });
  main.dataset.ready = "1";
})();
