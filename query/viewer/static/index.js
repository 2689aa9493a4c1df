// Index: the graphs, a feature finder (by id, or by a text run through the model), and the dictionaries'
// held-out metrics across layers.
const fixed = (value, digits = 3) => (value == null ? "" : Number(value).toFixed(digits));
(async function () {
  const main = document.getElementById("index");
  const data = await getJSON("/api/index");
  const rows = data.graphs.map(g => `<tr><td><a href="/graph/${encodeURIComponent(g.slug)}">${escapeHTML(g.slug)}</a></td>
    <td>${g.nodes}</td><td>${g.edges}</td><td>${g.replacement}</td><td>${g.completeness}</td><td>${escapeHTML(g.top_logit)}</td></tr>`);
  main.innerHTML = `<h2>Graphs</h2><table id="graphs"><tr><th>graph</th><th>nodes</th><th>edges</th>
    <th>replacement</th><th>completeness</th><th>top logit</th></tr>${rows.join("")}</table>
    <h2>Features</h2><form id="go"><input id="query" placeholder="a feature id (plt/12/345) or a text" size="50">
    <button>find</button></form><div id="found"></div>
    <h2>Dictionaries</h2><div id="metrics" style="height:320px"></div>
    <table id="dictionaries"><tr><th>set</th><th>layer</th><th>latents</th><th>FVU</th><th>FVU excl. pos 0</th>
    <th>L0</th><th>dead</th><th>ΔCE</th><th>explained</th><th>detection</th><th>fuzzing</th></tr>
    ${data.dictionaries.map(d => `<tr><td>${escapeHTML(d.name)}</td>
    <td>${d.layer}</td><td>${d.n_latents}</td><td>${fixed(d.fvu)}</td><td>${fixed(d.fvu_excl_pos0)}</td>
    <td>${fixed(d.l0, 1)}</td><td>${fixed(d.dead_frac)}</td><td>${fixed(d.delta_ce)}</td>
    <td>${d.explained_features ?? ""}</td><td>${fixed(d.detection_acc)}</td><td>${fixed(d.fuzzing_acc)}</td></tr>`).join("")}</table>`;
  document.getElementById("go").addEventListener("submit", async event => {
    event.preventDefault();
    const query = document.getElementById("query").value.trim();
    if (/^[^/\s]+\/\d+\/\d+$/.test(query)) { location.href = "/feature/" + query; return; }
    const found = document.getElementById("found");
    found.textContent = "running the model…";
    try {
      const body = await postJSON("/api/search", { text: query });
      found.innerHTML = "<ol>" + body.features.map(r => `<li><a href="/feature/${encodeURI(r.feature_id)}">${escapeHTML(r.feature_id)}</a>
        on ${escapeHTML(r.token)} (${Number(r.activation).toFixed(2)}) ${escapeHTML(r.label)}</li>`).join("") + "</ol>";
    } catch (error) {
      found.textContent = error.message;
    }
  });
  const byName = {};
  for (const d of data.dictionaries) (byName[d.name] = byName[d.name] || []).push(d);
  const traces = [];
  for (const [name, ds] of Object.entries(byName)) {
    traces.push({ x: ds.map(d => d.layer), y: ds.map(d => d.fvu_excl_pos0), name: `${name} FVU (excl. pos 0)`, mode: "lines+markers" });
    traces.push({ x: ds.map(d => d.layer), y: ds.map(d => d.delta_ce), name: `${name} ΔCE`, mode: "lines+markers", yaxis: "y2" });
  }
  if (data.sweeps.length) drawSweeps(main, data.sweeps);
  Plotly.newPlot("metrics", traces, { margin: { t: 10 }, xaxis: { title: { text: "layer" } },
    yaxis: { title: { text: "FVU" } }, yaxis2: { title: { text: "ΔCE" }, overlaying: "y", side: "right" } });
})();

// One curve per swept (set, layer, skip or not) against L0, FVU and ΔCE side by side with their 95%
// intervals over seeds, then every point's figures (explanation scores where its features were explained).
function drawSweeps(main, sweeps) {
  main.insertAdjacentHTML("beforeend", `<h2>Sparsity sweeps</h2><div class="sweep-plots">
    <div id="sweep-fvu" style="height:320px"></div><div id="sweep-ce" style="height:320px"></div></div>
    <table id="sweep-points"><tr><th>sweep</th><th>k</th><th>seeds</th><th>FVU excl. pos 0</th><th>ΔCE</th>
    <th>L0</th><th>detection</th><th>fuzzing</th></tr></table>`);
  const name = s => `${s.dictionary} layer ${s.layer}${s.skip ? " (skip)" : ""}`;
  const withInterval = (p, metric) => (p[metric] == null ? "" : `${fixed(p[metric])} ± ${fixed(p[metric + "_ci95"])}`);
  for (const [div, metric, title] of [["sweep-fvu", "fvu_excl_pos0", "FVU (excl. pos 0)"], ["sweep-ce", "delta_ce", "ΔCE (nats)"]]) {
    const curves = sweeps.map(s => ({
      x: s.points.map(p => p.l0), y: s.points.map(p => p[metric]), text: s.points.map(p => `k=${p.k}, ${p.seeds} seeds`),
      error_y: { type: "data", array: s.points.map(p => p[metric + "_ci95"]), visible: true },
      mode: "lines+markers", name: name(s),
    }));
    Plotly.newPlot(div, curves, { margin: { t: 10, b: 50 }, xaxis: { title: { text: "L0 (mean active latents)" }, type: "log" },
      yaxis: { title: { text: `${title}, mean ± 95%` } } });
  }
  const rows = sweeps.flatMap(s => s.points.map(p => `<tr><td>${escapeHTML(name(s))}</td><td>${p.k}</td>
    <td>${p.seeds}</td><td>${withInterval(p, "fvu_excl_pos0")}</td><td>${withInterval(p, "delta_ce")}</td>
    <td>${fixed(p.l0, 1)}</td><td>${withInterval(p, "detection_acc")}</td><td>${withInterval(p, "fuzzing_acc")}</td></tr>`));
  document.getElementById("sweep-points").insertAdjacentHTML("beforeend", rows.join(""));
}
