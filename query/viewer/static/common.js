// Small helpers the pages share: fetch JSON, escape text, colour an activation.
async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
async function postJSON(url, payload) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function escapeHTML(text) {
  const div = document.createElement("div");
  div.textContent = text == null ? "" : String(text);
  return div.innerHTML;
}
function heat(value, peak) {
  const alpha = peak > 0 ? Math.max(0, Math.min(1, value / peak)) : 0;
  return `rgba(255, 140, 0, ${alpha.toFixed(3)})`;
}
function featureCard(f) {
  const logits = (f.top_logits || []).slice(0, 8).map(escapeHTML).join(", ");
  return `<h3><a href="/feature/${encodeURI(f.feature_id)}">${escapeHTML(f.feature_id)}</a></h3>
    ${f.explanation ? `<p><b>${escapeHTML(f.explanation)}</b> <span class="muted">(${escapeHTML(f.explainer)}${
      f.detection !== undefined ? `; detection ${Number(f.detection).toFixed(2)}` : ""})</span></p>` : ""}
    <p>${escapeHTML(f.label)}</p>
    <p class="muted">density ${(100 * f.density).toFixed(4)}% · max ${Number(f.max_act).toFixed(3)}</p>
    <p>promotes: ${logits}</p>`;
}
