// Graph page: the nodes and edges that matter for the chosen logit (influence, as pruning ranks), laid out
// without overlaps, labelled; the strongest feature paths into the logit highlighted; click a node for its
// card (its edges from the whole stored graph), pin nodes into a subgraph (scored on the server), group
// them into supernodes, ablate or steer them; the whole view lives in the URL (#...), so a link shares it.
const OFFLINE = Boolean(window.PAGE_DATA);

function readState(hash) {
  const q = new URLSearchParams(hash.replace(/^#/, ""));
  const list = key => (q.get(key) ? q.get(key).split(",").filter(Boolean) : []);
  let groups = null;
  try { groups = q.get("groups") ? JSON.parse(q.get("groups")) : null; } catch (_) { groups = null; }
  const number = (key, fallback) => (q.get(key) !== null && !Number.isNaN(Number(q.get(key))) ? Number(q.get(key)) : fallback);
  return { logit: q.get("logit") || null, pins: list("pins"), sel: q.get("sel") || null,
    nodes: number("nodes", 0.8), edges: number("edges", 0.85), errors: q.get("errors") || "dim",
    q: q.get("q") || "", sub: q.get("sub") === "1", groups };
}

function writeState(state) {
  const q = new URLSearchParams();
  if (state.logit) q.set("logit", state.logit);
  if (state.pins.length) q.set("pins", state.pins.join(","));
  if (state.sel) q.set("sel", state.sel);
  q.set("nodes", String(state.nodes));
  q.set("edges", String(state.edges));
  q.set("errors", state.errors);
  if (state.q) q.set("q", state.q);
  if (state.sub) q.set("sub", "1");
  q.set("groups", JSON.stringify(state.groups || []));
  history.replaceState(null, "", `#${q.toString()}`);
}

(async function () {
  const page = document.getElementById("graph-page");
  const plot = document.getElementById("plot");
  const panel = document.getElementById("panel");
  const controls = document.getElementById("controls");
  const subgraphBox = document.getElementById("subgraph");
  const slug = page.dataset.slug;
  const state = readState(location.hash);
  let data;

  async function load(logit) {
    if (OFFLINE) {
      const base = window.PAGE_DATA;
      const chosen = logit && base.by_logit && base.by_logit[logit] ? base.by_logit[logit] : {};
      return { ...base, ...chosen };
    }
    return getJSON(`/api/graph/${encodeURIComponent(slug)}${logit ? `?logit=${encodeURIComponent(logit)}` : ""}`);
  }
  try {
    data = await load(state.logit);
  } catch (error) {
    page.innerHTML = `<p class="error" id="error">${escapeHTML(error.message)}</p>`;
    return;
  }
  const graph = data.graph;
  state.logit = data.logit;
  if (state.groups === null) state.groups = (data.supernodes || []).map(g => [g.name, ...g.node_ids]);
  let saved = { supernodes: data.supernodes || [], pins: data.pins || [] };
  let runs = data.interventions || [];
  const nLayers = Math.max(0, ...data.nodes.filter(n => n.kind === "logit").map(n => n.layer));
  const nPositions = (graph.tokens || []).length || 1 + Math.max(...data.nodes.map(n => n.position));

  function items() {
    return visibleNodes(data.nodes, state).map(n => ({ ...n, id: n.node_id }));
  }

  function draw() {
    const merged = mergeGroups(items(), keptEdges(data.edges, state.edges), state.groups || []);
    const { width, height } = plotSize(plot);
    const placed = layoutNodes(merged.items, nLayers, nPositions, width, height);
    const pinned = new Set(state.pins.map(id => merged.owner[id] || id));
    const needle = state.q.toLowerCase();
    const hit = i => needle && (i.label || i.name || "").toLowerCase().includes(needle);
    const priority = i => (i.kind === "logit" ? 1e9 + i.activation : pinned.has(i.id) || i.id === state.sel ? 1e8 : i.kind === "supernode" ? 1e7 : i.kind === "feature" ? i.score : 0);
    const labels = placeLabels(merged.items, placed, projection(plot, placed, nLayers), priority, 40);
    const dim = item => (item.kind === "error" && state.errors === "dim") || (state.sub && item.kind === "token");
    const selected = state.sel && (merged.owner[state.sel] || state.sel);
    const owned = id => merged.owner[id] || id;
    const logitNode = data.nodes.find(n => n.node_id === state.logit);
    renderScene(plot, {
      placed, nLayers, tokens: graph.tokens, opacity: state.sel ? 0.12 : 0.3, edges: merged.edges, selected,
      highlight: selected ? merged.edges.filter(([s, t]) => s === selected || t === selected) : [],
      paths: (data.paths || []).flatMap(p => p.nodes.slice(1).map((t, i) => [owned(p.nodes[i]), owned(t)])).filter(([s, t]) => s !== t),
      title: `${graph.prompt || graph.slug} → ${visibleToken(logitNode ? logitNode.token : "")} · ${merged.items.length} nodes, ${merged.edges.length} edges drawn of ${data.n_edges}`,
      nodes: merged.items.map((i, k) => ({
        id: i.id, hover: hoverText(i), label: labels.text[k], labelSpot: labels.where[k], color: COLORS[i.kind],
        symbol: i.kind === "supernode" ? "square" : i.kind === "error" ? "diamond" : "circle", opacity: dim(i) ? 0.35 : 1,
        ring: pinned.has(i.id) ? "#000" : hit(i) ? "#ff7f0e" : null,
      })),
    }, onNodeClick);
    plot.dataset.nodes = String(merged.items.length);
    plot.dataset.state = JSON.stringify(state);
    writeState(state);
  }

  function onNodeClick(id, event) {
    if (event.ctrlKey || event.metaKey || event.shiftKey) togglePin(id); else select(id);
  }

  function legend() {
    const dot = (color, text, shape = "●") => `<span style="color:${color}">${shape}</span> ${text}`;
    return `<div id="legend" class="legend">${dot(COLORS.feature, "feature")} ${dot(COLORS.error, "MLP error", "◆")}
      ${dot(COLORS.token, "token")} ${dot(COLORS.logit, "logit")} ${dot(COLORS.supernode, "supernode", "■")}
      <br><span style="color:#1f77b4">━</span> excites <span style="color:#d62728">━</span> inhibits
      <span style="color:#ff7f0e">━</span> top paths to the logit · ring: pinned</div>`;
  }

  function showControls() {
    const logits = data.nodes.filter(n => n.kind === "logit").sort((a, b) => b.activation - a.activation);
    const options = logits.map(n => `<option value="${escapeHTML(n.node_id)}" ${n.node_id === state.logit ? "selected" : ""}>${escapeHTML(visibleToken(n.token))} (${(100 * n.activation).toFixed(1)}%)</option>`);
    controls.innerHTML = `${legend()}
      <label>logit <select id="logit">${options.join("")}</select></label>
      <label>nodes carrying <input id="nodes" type="range" min="0.05" max="1" step="0.01" value="${state.nodes}"> <span id="nodes-share">${Math.round(100 * state.nodes)}%</span> of its influence</label>
      <label>edges carrying <input id="edges" type="range" min="0.05" max="1" step="0.01" value="${state.edges}"> <span id="edges-share">${Math.round(100 * state.edges)}%</span> (<span id="edges-count"></span> edges)</label>
      <label>errors <select id="errors">${["dim", "show", "hide"].map(v => `<option ${v === state.errors ? "selected" : ""}>${v}</option>`).join("")}</select></label>
      <label><input id="sub" type="checkbox" ${state.sub ? "checked" : ""}> pinned subgraph only</label>
      <input id="search" placeholder="search labels" size="24" value="${escapeHTML(state.q)}">
      <p class="muted">pruned graph: replacement ${Number(data.scores.replacement).toFixed(3)}, completeness ${Number(data.scores.completeness).toFixed(3)}${
        OFFLINE ? "" : (data.same_prompt || []).map(g => ` · <a class="compare" href="/compare/${encodeURIComponent(slug)}/${encodeURIComponent(g.slug)}">compare with ${escapeHTML(g.dictionaries)}${g.target ? ` (${escapeHTML(g.target)})` : ""}</a>`).join("")}</p>
      <ol id="paths" class="paths">${(data.paths || []).map(p => `<li>${p.nodes.map(id => `<a href="#" data-node="${escapeHTML(id)}">${escapeHTML(nodeName(id))}</a>`).join(" → ")} <span class="muted" title="product of each edge's share of its target's input">${(100 * p.share).toFixed(3)}%</span></li>`).join("")}</ol>`;
    document.getElementById("edges-count").textContent = keptEdges(data.edges, state.edges).length;
    document.getElementById("logit").addEventListener("change", async event => {
      state.logit = event.target.value;
      Object.assign(data, await load(state.logit));
      showControls();
      draw();
    });
    for (const key of ["nodes", "edges"]) {
      document.getElementById(key).addEventListener("input", event => {
        state[key] = Number(event.target.value);
        document.getElementById(`${key}-share`).textContent = `${Math.round(100 * state[key])}%`;
        document.getElementById("edges-count").textContent = keptEdges(data.edges, state.edges).length;
        draw();
      });
    }
    document.getElementById("errors").addEventListener("change", event => { state.errors = event.target.value; draw(); });
    document.getElementById("sub").addEventListener("change", event => { state.sub = event.target.checked; draw(); });
    document.getElementById("search").addEventListener("input", event => { state.q = event.target.value; draw(); });
    document.querySelectorAll("#paths a").forEach(a => a.addEventListener("click", event => { event.preventDefault(); select(a.dataset.node); }));
  }

  function nodeName(id) {
    const n = data.nodes.find(m => m.node_id === id);
    if (!n) return id;
    if (n.kind === "token" || n.kind === "logit") return `${visibleToken(n.token)}`;
    if (n.kind === "error") return `err L${n.layer}@${n.position}`;
    return `${n.feature_id}@${n.position}`;
  }

  async function select(id) {
    state.sel = id;
    draw();
    const group = (state.groups || []).find(([name]) => `group:${name}` === id);
    if (group) return showGroupCard(group);
    const n = data.nodes.find(m => m.node_id === id);
    if (!n) return;
    const pinned = state.pins.includes(id);
    const where = n.kind === "error" ? `MLP reconstruction error of layer ${n.layer} at position ${n.position} (${escapeHTML(visibleToken(n.token))})`
      : `${n.kind} at position ${n.position} (${escapeHTML(visibleToken(n.token))})${n.kind === "feature" ? `, layer ${n.layer}` : ""}`;
    panel.innerHTML = `<div id="node" data-node="${escapeHTML(id)}"><h3>${escapeHTML(n.feature_id || nodeName(id))}</h3>
      <p>${where} · influence on the logit ${Number(n.score).toFixed(4)}${n.kind === "feature" ? ` · activation ${Number(n.activation).toFixed(3)}` : ""}</p>
      <button id="pin">${pinned ? "unpin" : "pin"}</button>
      <div id="card"></div><h4>inputs</h4><ul id="incoming" class="edges"></ul><h4>outputs</h4><ul id="outgoing" class="edges"></ul></div>`;
    document.getElementById("pin").addEventListener("click", () => togglePin(id));
    showEdges(id, "in", document.getElementById("incoming"));
    showEdges(id, "out", document.getElementById("outgoing"));
    if (n.kind !== "feature") return;
    const card = document.getElementById("card");
    if (OFFLINE) { card.innerHTML = `<p>${escapeHTML(n.label)}</p>`; return; }
    try { card.innerHTML = featureCard(await getJSON(`/api/feature/${encodeURI(n.feature_id)}`)); }
    catch (error) { card.innerHTML = `<p class="muted">${escapeHTML(error.message)}</p>`; }
  }

  async function showEdges(id, direction, list) {
    let rows;
    if (OFFLINE) {  // what the file holds: the loaded edges
      rows = data.edges.filter(e => (direction === "in" ? e[1] === id : e[0] === id)).slice(0, 20)
        .map(e => ({ node: direction === "in" ? e[0] : e[1], weight: e[2] }));
    } else {
      try {
        rows = (await getJSON(`/api/graph/${encodeURIComponent(slug)}/edges?node=${encodeURIComponent(id)}&direction=${direction}&k=20`)).edges;
      } catch (error) { list.innerHTML = `<li class="muted">${escapeHTML(error.message)}</li>`; return; }
    }
    list.innerHTML = rows.map(r => `<li><a href="#" data-node="${escapeHTML(r.node)}">${escapeHTML(nodeName(r.node))}</a> <span class="${r.weight >= 0 ? "plus" : "minus"}">${Number(r.weight).toFixed(3)}</span></li>`).join("") || "<li class='muted'>none</li>";
    list.querySelectorAll("a").forEach(a => a.addEventListener("click", event => { event.preventDefault(); select(a.dataset.node); }));
  }

  function togglePin(id) {
    state.pins = state.pins.includes(id) ? state.pins.filter(p => p !== id) : [...state.pins, id];
    showSubgraph();
    return select(id);
  }

  function showGroupCard([name, ...members]) {
    const stored = saved.supernodes.find(g => g.name === name);
    const isSaved = Boolean(stored);
    const v = stored && stored.validation;
    const over = v && v.prompt_set ? ` on average over prompt set ${escapeHTML(v.prompt_set)}` : "";
    const validated = v ? `<p class="auto">automatic: zeroing it moves the target's logit by ${v.effect.toFixed(3)}${over}
      (random groups of its layers: ${v.control.toFixed(3)} ± ${v.control_ci95.toFixed(3)}); its weakest member carrying the
      group's write undoes ${(100 * v.interchangeability).toFixed(0)}% of that</p>` : "";
    panel.innerHTML = `<div id="group-card" data-group="${escapeHTML(name)}"><h3>▣ ${escapeHTML(name)}</h3>
      <p>${members.length} nodes${isSaved ? " · saved" : " · not saved"}</p>${validated}
      <ul>${members.map(id => `<li>${escapeHTML(nodeName(id))}</li>`).join("")}</ul>
      <input id="rename-to" placeholder="new name" value="${escapeHTML(name)}"> <button id="rename">rename</button>
      <button id="ungroup">ungroup</button> <button id="delete-group">delete</button>
      <button id="pin-members" title="pin its nodes, to score or intervene on them">pin its nodes</button> <span id="group-error" class="error"></span></div>`;
    const fail = error => (document.getElementById("group-error").textContent = error.message);
    document.getElementById("rename").addEventListener("click", async () => {
      const to = document.getElementById("rename-to").value.trim();
      try {
        if (!OFFLINE && isSaved) saved.supernodes = (await postJSON(`/api/graph/${encodeURIComponent(slug)}/supernodes`, { name, new_name: to })).supernodes;
      } catch (error) { return fail(error); }
      state.groups = state.groups.map(g => (g[0] === name ? [to, ...g.slice(1)] : g));
      await select(`group:${to}`);
    });
    document.getElementById("pin-members").addEventListener("click", () => {
      state.pins = [...new Set([...state.pins, ...members])];
      showSubgraph();
      draw();
    });
    document.getElementById("ungroup").addEventListener("click", async () => {
      state.groups = state.groups.filter(g => g[0] !== name);
      state.sel = null;
      panel.innerHTML = "";
      draw();
    });
    document.getElementById("delete-group").addEventListener("click", async () => {
      try {
        if (!OFFLINE && isSaved) saved.supernodes = (await sendJSON("DELETE", `/api/graph/${encodeURIComponent(slug)}/supernodes/${encodeURIComponent(name)}`)).supernodes;
      } catch (error) { return fail(error); }
      state.groups = state.groups.filter(g => g[0] !== name);
      state.sel = null;
      panel.innerHTML = "";
      showSubgraph();
      draw();
    });
  }

  async function showSubgraph() {
    const pins = state.pins.map(id => `<li><a href="#" data-node="${escapeHTML(id)}">${escapeHTML(nodeName(id))}</a> <a href="#" class="unpin" data-node="${escapeHTML(id)}" title="unpin">×</a></li>`);
    const savedPins = saved.pins.map(p => `<li><a href="#" class="load-pins" data-name="${escapeHTML(p.name)}">${escapeHTML(p.name)}</a> (${p.node_ids.length})</li>`);
    const groups = (state.groups || []).map(([name, ...ids]) => `<li class="supernode"><a href="#" data-node="group:${escapeHTML(name)}">${escapeHTML(name)}</a>: ${ids.length} nodes</li>`);
    const model = OFFLINE ? `<p class="muted">scores and interventions need <code>circuitdb serve</code></p>` : `
      <p id="scores" class="scores"></p>
      <h4>intervene on the pinned features</h4>
      <select id="mode"><option>zero</option><option>scale</option><option>set</option></select>
      <input id="value" type="number" step="any" value="0" size="5">
      <label><input id="freeze" type="checkbox" checked> frozen attention</label>
      <label>generate <input id="generate" type="number" min="0" max="32" value="8" size="3"></label>
      <button id="intervene">run</button><div id="intervention"></div>
      <h4>interventions from this graph</h4><ul id="runs">${runs.map(runLine).join("") || "<li class='muted'>none yet</li>"}</ul>`;
    subgraphBox.innerHTML = `<h4>pinned (${state.pins.length})</h4><ul id="pinned">${pins.join("")}</ul>
      <input id="group-name" placeholder="name"> <button id="save-group">group pinned</button> <button id="save-pins">save pins</button>
      <span id="pins-error" class="error"></span>
      <h4>supernodes</h4><ul id="groups">${groups.join("") || "<li class='muted'>none</li>"}</ul>
      <h4>saved pin sets</h4><ul id="pin-sets">${savedPins.join("") || "<li class='muted'>none</li>"}</ul>${model}`;
    subgraphBox.querySelectorAll("#pinned a:not(.unpin), #groups a").forEach(a => a.addEventListener("click", e => { e.preventDefault(); select(a.dataset.node); }));
    subgraphBox.querySelectorAll("a.unpin").forEach(a => a.addEventListener("click", e => { e.preventDefault(); togglePin(a.dataset.node); }));
    subgraphBox.querySelectorAll("a.load-pins").forEach(a => a.addEventListener("click", e => {
      e.preventDefault();
      state.pins = saved.pins.find(p => p.name === a.dataset.name).node_ids.slice();
      showSubgraph();
      draw();
    }));
    document.getElementById("save-group").addEventListener("click", saveGroup);
    document.getElementById("save-pins").addEventListener("click", savePins);
    if (OFFLINE) return;
    document.getElementById("intervene").addEventListener("click", intervene);
    const scores = document.getElementById("scores");
    if (!state.pins.some(id => (data.nodes.find(n => n.node_id === id) || {}).kind === "feature")) {
      scores.textContent = "pin features to score their subgraph";
      return;
    }
    try {
      const s = await postJSON(`/api/graph/${encodeURIComponent(slug)}/subgraph`, { node_ids: state.pins });
      scores.innerHTML = `subgraph: replacement <b id="sub-replacement">${s.replacement.toFixed(4)}</b>, completeness <b id="sub-completeness">${s.completeness.toFixed(4)}</b> (${s.n_nodes} nodes, ${s.n_edges} edges)`;
      scores.dataset.scores = JSON.stringify(s);
    } catch (error) { scores.textContent = error.message; }
  }

  async function saveGroup() {
    const name = document.getElementById("group-name").value.trim();
    const error = document.getElementById("pins-error");
    if (!name || state.pins.length < 2) { error.textContent = "pin two or more nodes and name the group"; return; }
    try {
      if (!OFFLINE) saved.supernodes = (await postJSON(`/api/graph/${encodeURIComponent(slug)}/supernodes`, { name, node_ids: state.pins })).supernodes;
    } catch (e) { error.textContent = e.message; return; }
    state.groups = (state.groups || []).filter(g => g[0] !== name).concat([[name, ...state.pins]]);
    state.pins = [];
    showSubgraph();
    draw();
  }

  async function savePins() {
    const name = document.getElementById("group-name").value.trim();
    const error = document.getElementById("pins-error");
    if (OFFLINE) { error.textContent = "the URL holds the pins of an offline page"; return; }
    try { saved.pins = (await postJSON(`/api/graph/${encodeURIComponent(slug)}/pins`, { name, node_ids: state.pins })).pins; }
    catch (e) { error.textContent = e.message; return; }
    showSubgraph();
  }

  function runLine(run) {
    return `<li data-run="${escapeHTML(run.run_id)}">${escapeHTML(run.mode)} ${run.mode === "zero" ? "" : run.value} · ${escapeHTML(visibleToken(run.top_token_before))} → <b>${escapeHTML(visibleToken(run.top_token_after))}</b>${run.generated ? ` · “${escapeHTML(run.generated)}”` : ""} <span class="muted">${escapeHTML(run.run_id)}</span></li>`;
  }

  async function intervene() {
    const out = document.getElementById("intervention");
    const members = state.pins.flatMap(id => (id.startsWith("group:") ? [] : [id]));
    out.textContent = "running…";
    try {
      const result = await postJSON(`/api/graph/${encodeURIComponent(slug)}/intervene`, {
        node_ids: members, mode: document.getElementById("mode").value, value: Number(document.getElementById("value").value),
        freeze_attention: document.getElementById("freeze").checked, generate: Number(document.getElementById("generate").value) });
      out.innerHTML = `<table id="changes"><tr><th>token</th><th>before</th><th>after</th><th>change</th></tr>${result.changes.map(c =>
        `<tr><td>${escapeHTML(visibleToken(c.token))}</td><td>${c.p_before.toFixed(4)}</td><td>${c.p_after.toFixed(4)}</td><td>${c.change >= 0 ? "+" : ""}${c.change.toFixed(4)}</td></tr>`).join("")}</table>
        <p>continuation: <span id="continuation">${escapeHTML(result.generated)}</span> <span class="muted">run ${escapeHTML(result.run_id)}</span></p>`;
      out.dataset.result = JSON.stringify(result);
      runs = [{ ...result, mode: document.getElementById("mode").value, value: Number(document.getElementById("value").value) }, ...runs];
      document.getElementById("runs").innerHTML = runs.map(runLine).join("");
    } catch (error) { out.textContent = error.message; }
  }

  showControls();
  draw();
  showSubgraph();
  window.addEventListener("resize", () => draw());
  window.addEventListener("hashchange", () => location.reload());  // a pasted link to another view
  if (state.sel) await select(state.sel);
  plot.dataset.ready = "1";
})();
