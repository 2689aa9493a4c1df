// Small helpers the pages share: fetch JSON, send JSON (with the server's token, when it has one), escape
// text, show whitespace tokens, colour an activation.
const TOKEN_KEY = "circuitdb-token";
(function keepToken() {  // a page opened as /?token=... (what `serve` prints) keeps it for later writes
  const given = new URLSearchParams(location.search).get("token");
  if (given && window.localStorage) localStorage.setItem(TOKEN_KEY, given);
})();
async function answer(response) {
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
async function getJSON(url) {
  return answer(await fetch(url));
}
async function sendJSON(method, url, payload) {
  const headers = { "Content-Type": "application/json" };
  const token = window.localStorage && localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  return answer(await fetch(url, { method, headers, body: payload === undefined ? undefined : JSON.stringify(payload) }));
}
function postJSON(url, payload) {
  return sendJSON("POST", url, payload);
}
function escapeHTML(text) {
  const div = document.createElement("div");
  div.textContent = text == null ? "" : String(text);
  return div.innerHTML;
}
// A token as text a reader can see: spaces as ␣, newlines as ↵, tabs as ⇥, an empty token as ∅.
function visibleToken(text) {
  if (text == null || text === "") return "∅";
  return String(text).replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}
function heat(value, peak) {
  const alpha = peak > 0 ? Math.max(0, Math.min(1, value / peak)) : 0;
  return `rgba(255, 140, 0, ${alpha.toFixed(3)})`;
}
const LABEL_NOTE = "heuristic label (no explanation stored): 'on X' is the token of its strongest activation in the corpus, → the three logits its decoder promotes most";
function featureCard(f) {
  const logits = (f.top_logits || []).slice(0, 8).map(escapeHTML).join(", ");
  return `<h3><a href="/feature/${encodeURI(f.feature_id)}">${escapeHTML(f.feature_id)}</a></h3>
    ${f.explanation ? `<p><b>${escapeHTML(f.explanation)}</b> <span class="muted">(${escapeHTML(f.explainer)}${
      f.detection !== undefined ? `; detection ${Number(f.detection).toFixed(2)}` : ""})</span></p>` : ""}
    <p class="label" title="${escapeHTML(LABEL_NOTE)}">${escapeHTML(f.label)} <span class="muted">ⓘ ${escapeHTML(LABEL_NOTE)}</span></p>
    <p class="muted">density ${(100 * f.density).toFixed(4)}% · max ${Number(f.max_act).toFixed(3)}</p>
    <p>promotes: ${logits}</p>`;
}
