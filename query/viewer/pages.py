"""The viewer's HTML: page shells whose data comes from the JSON API, and the graph page as one offline file."""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path

from starlette.responses import HTMLResponse

from circuitdb.store import Store
from circuitdb.store.layout import atomic_write_bytes
from query.graph_view import graph_document
from query.questions import check_output_file

STATIC = Path(__file__).parent / "static"


@cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def page(title: str, body: str, scripts: list[str]) -> str:
    tags = "".join(f'<script src="/static/{name}"></script>' for name in scripts)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)} · circuitdb</title>'
        f'<link rel="stylesheet" href="/static/style.css"></head><body>'
        f'<nav><a href="/">circuitdb</a></nav>{body}{tags}</body></html>'
    )


def graph_body(slug: str) -> str:
    return (
        f'<main id="graph-page" class="graph-view" data-slug="{html.escape(slug)}"><div class="plot" id="plot"></div>'
        '<aside id="side"><div id="controls"></div><div id="subgraph"></div><div id="panel"></div></aside></main>'
    )


def compare_body(first: str, second: str) -> str:
    """Two graphs side by side (same prompt, e.g. two dictionary sets or two targets), shared nodes marked."""
    return (
        f'<main id="compare-page" data-slugs="{html.escape(first)} {html.escape(second)}">'
        '<div class="plot" id="plot"></div><div class="plot" id="plot-b"></div><div id="compare-summary"></div></main>'
    )


def error_page(message: str, status: int = 404) -> HTMLResponse:
    """A page saying what was not found (and how to find what exists), not a blank one."""
    body = (
        f'<main id="error"><h2>Not found</h2><p class="error">{html.escape(message)}</p>'
        '<p><a href="/">The index</a> lists what the store holds.</p></main>'
    )
    return HTMLResponse(page("not found", body, []), status_code=status)


def _inline_script(source: str) -> str:
    return "<script>" + source.replace("</script", "<\\/script") + "</script>"


def graph_html(document: dict) -> str:
    """The graph page as one file: styles, the page's scripts and the graph's data inlined, so it
    opens from disk with no server and no network (feature cards show what the graph itself holds)."""
    data = json.dumps(document, default=str).replace("</", "<\\/")
    pages = [(STATIC / name).read_text() for name in ("common.js", "graph_draw.js", "graph.js")]
    scripts = [f"window.PAGE_DATA = {data};", *pages]
    slug = document["graph"]["slug"]
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(slug)} · circuitdb</title>'
        f"<style>{(STATIC / 'style.css').read_text()}</style></head><body>"
        f"<nav>circuitdb</nav>{graph_body(slug)}{''.join(_inline_script(s) for s in scripts)}</body></html>"
    )


def export_graph_html(store: Store, slug: str, out: Path, max_edges: int) -> None:
    """Write the graph page as one self-contained HTML file (opens from disk, no server, no network): the
    document of every logit is inlined, so choosing another logit works offline too."""
    document = graph_document(store, slug, max_edges)
    logits = [node["node_id"] for node in document["nodes"] if node["kind"] == "logit"]
    document["by_logit"] = {
        logit: {key: value for key, value in graph_document(store, slug, max_edges, logit).items() if key in PER_LOGIT}
        for logit in logits
    }
    check_output_file(out)
    atomic_write_bytes(out, graph_html(document).encode(), checksum=False)


PER_LOGIT = ("nodes", "edges", "paths", "logit")
"""What changes with the chosen logit (the rest of a document is the graph's)."""
