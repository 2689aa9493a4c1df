"""`circuitdb serve`: a small web app over the store, read-only but for the supernodes people group.

Pages are thin HTML shells; their data comes from the JSON API under `/api/` (the same calls the CLI
makes, in query/questions.py), and their drawing from plotly.js, which the `plotly` wheel ships: nothing
is fetched from the network at view time. Hand-written JavaScript lives in `static/`.
"""

from __future__ import annotations

import html
import json

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from circuitdb.errors import CircuitDBError
from circuitdb.project import Project
from query.engine import keep_catalog
from query.questions import (
    dictionary_metrics,
    feature_page,
    graph_document,
    graph_listing,
    graphs_with,
    save_supernode,
    sweep_summaries,
)
from query.viewer.pages import STATIC, graph_body, page, plotly_js

MAX_EDGES = 5000
"""Edges a graph page draws at first (the strongest); its slider shows fewer."""


async def _json_body(request: Request) -> dict:
    """A POST's JSON body. Only `application/json` is read: another site's page cannot send that type
    without the browser asking this server first (CORS), so it cannot write supernodes here."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ValueError("send the body as application/json")
    body = await request.json()
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _error(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=404)


def _json(document: dict) -> Response:
    """`document` as JSON, timestamps as text."""
    return Response(json.dumps(document, default=str), media_type="application/json")


def make_app(project: Project) -> Starlette:
    """The app over the project's store (every request reads the tables as they are now) and its model, loaded
    on the first request that runs one (text search, "try your text"): pages that only read never wait for it."""
    store = project.store
    keep_catalog(store)  # views made once, remade when a table's files change

    def index(_: Request) -> HTMLResponse:
        return HTMLResponse(page("index", '<main id="index"></main>', ["plotly.js", "common.js", "index.js"]))

    def graph(request: Request) -> HTMLResponse:
        slug = request.path_params["slug"]
        return HTMLResponse(page(slug, graph_body(slug), ["plotly.js", "common.js", "graph.js"]))

    def feature(request: Request) -> HTMLResponse:
        feature_id = request.path_params["feature_id"]
        body = f'<main id="feature-page" data-feature="{html.escape(feature_id)}"></main>'
        return HTMLResponse(page(feature_id, body, ["plotly.js", "common.js", "feature.js"]))

    def api_index(_: Request) -> JSONResponse:
        listing = graph_listing(store) if "graphs" in store.table_names() else None
        graphs = [dict(zip(listing.columns, row, strict=True)) for row in listing.rows] if listing else []
        return JSONResponse(
            {"graphs": graphs, "dictionaries": dictionary_metrics(store), "sweeps": sweep_summaries(store)}
        )

    def api_graph(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("max_edges", MAX_EDGES))
            return JSONResponse(
                json.loads(json.dumps(graph_document(store, request.path_params["slug"], limit), default=str))
            )
        except CircuitDBError as exc:
            return _error(exc)

    def api_feature(request: Request) -> Response:
        try:
            row, exemplars = feature_page(store, request.path_params["feature_id"], 8)
        except CircuitDBError as exc:
            return _error(exc)
        return _json({**row, "exemplars": exemplars, "graphs": graphs_with(store, row["feature_id"])})

    async def api_supernodes(request: Request) -> Response:
        """The viewer's only write: a named group of nodes, into the graph's `graph_annotations` partition."""
        try:
            body = await _json_body(request)
            saved = save_supernode(store, request.path_params["slug"], str(body["name"]), list(body["node_ids"]))
        except (CircuitDBError, ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return _json({"supernodes": saved})

    async def api_feature_text(request: Request) -> Response:
        """The feature's activation on each token of a text the reader types."""
        from circuitdb.dictionaries.stored import stored_dictionary
        from circuitdb.features import feature_on_text
        from circuitdb.store import parse_feature_id

        try:
            name, layer, index = parse_feature_id(request.path_params["feature_id"])
            coder, meta = stored_dictionary(store, name, layer)
            text = str((await _json_body(request))["text"])
            found = await run_in_threadpool(feature_on_text, project.model, coder, meta["input_hook"], index, text)
        except (CircuitDBError, ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return _json({"tokens": found["token"].to_list(), "values": found["activation"].to_list()})

    async def api_search(request: Request) -> Response:
        """The features most active on a text (pooled over its tokens), as `circuitdb search text` ranks them."""
        from circuitdb.dictionaries.stored import stored_set
        from circuitdb.features import ranked_text_matches

        try:
            text = request.query_params.get("text", "")
            dictionaries = stored_set(store, project.config.dictionaries.name)
            found = await run_in_threadpool(ranked_text_matches, store, project.model, dictionaries, text, 10, False)
        except CircuitDBError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return _json({"features": found.to_dicts()})

    def plotly(_: Request) -> Response:
        """plotly.js (4.8 MB) changes only with the installed wheel: browsers keep it for a day."""
        return Response(plotly_js(), media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/graph/{slug}", graph),
            Route("/feature/{feature_id:path}", feature),
            Route("/api/index", api_index),
            Route("/api/graph/{slug}", api_graph),
            Route("/api/graph/{slug}/supernodes", api_supernodes, methods=["POST"]),
            Route("/api/feature/{feature_id:path}/text", api_feature_text, methods=["POST"]),
            Route("/api/feature/{feature_id:path}", api_feature),
            Route("/api/search", api_search),
            Route("/static/plotly.js", plotly),
            Route("/favicon.ico", lambda _: Response(status_code=204)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


def serve(project: Project, host: str, port: int) -> None:
    """Serve until Ctrl-C (127.0.0.1 by default: this machine only)."""
    import uvicorn

    uvicorn.run(make_app(project), host=host, port=port, log_level="warning")
