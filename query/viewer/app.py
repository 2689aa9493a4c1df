"""`circuitdb serve`: a small web app over the store, read-only but for the supernodes people group.

Pages are thin HTML shells; their data comes from the JSON API under `/api/` (the same calls the CLI
makes, in query/questions.py), and their drawing from plotly.js, which the `plotly` wheel ships: nothing
is fetched from the network at view time. Hand-written JavaScript lives in `static/`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable

from starlette.applications import Starlette
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
from query.viewer.model_queue import ModelQueue, Refused, check_text_length, check_token_count
from query.viewer.pages import STATIC, graph_body, page, plotly_js
from query.viewer.response_cache import ResponseCache

MAX_EDGES = 5000
"""Edges a graph page draws at first (the strongest); its slider shows fewer."""
EDGES_LIMIT = 200_000
"""The most edges one request may ask for (`max_edges`)."""


async def _json_body(request: Request) -> dict:
    """A POST's JSON body. Only `application/json` is read: another site's page cannot send that type
    without the browser asking this server first (CORS), so it cannot write supernodes here."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ValueError("send the body as application/json")
    body = await request.json()
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _error(exc: Exception, status: int = 404) -> JSONResponse:
    headers = {"Retry-After": "2"} if status == 429 else None
    return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)


def _edge_limit(request: Request) -> int:
    """`max_edges` of a graph request: a whole number from 1 to EDGES_LIMIT."""
    given = request.query_params.get("max_edges", str(MAX_EDGES))
    if not given.isdigit() or not 1 <= int(given) <= EDGES_LIMIT:
        raise ValueError(f"max_edges must be a whole number from 1 to {EDGES_LIMIT}, not {given!r}")
    return int(given)


def _typed_text(body: dict) -> str:
    text = body.get("text")
    if not isinstance(text, str):
        raise ValueError('the body needs a text: {"text": "..."}')
    check_text_length(text)
    return text


def _json(document: dict) -> Response:
    """`document` as JSON, timestamps as text."""
    return Response(_encoded(document), media_type="application/json")


def _encoded(document: dict) -> bytes:
    return json.dumps(document, default=str).encode()


def make_app(project: Project) -> Starlette:
    """The app over the project's store (every request reads the tables as they are now) and its model, loaded
    on the first request that runs one (text search, "try your text"): pages that only read never wait for it."""
    store = project.store
    keep_catalog(store)  # views made once, remade when a table's files change
    model_queue = ModelQueue()
    answers = ResponseCache(store)

    def index(_: Request) -> HTMLResponse:
        return HTMLResponse(page("index", '<main id="index"></main>', ["plotly.js", "common.js", "index.js"]))

    def graph(request: Request) -> HTMLResponse:
        slug = request.path_params["slug"]
        return HTMLResponse(page(slug, graph_body(slug), ["plotly.js", "common.js", "graph.js"]))

    def feature(request: Request) -> HTMLResponse:
        feature_id = request.path_params["feature_id"]
        body = f'<main id="feature-page" data-feature="{html.escape(feature_id)}"></main>'
        return HTMLResponse(page(feature_id, body, ["plotly.js", "common.js", "feature.js"]))

    def index_document() -> dict:
        listing = graph_listing(store) if "graphs" in store.table_names() else None
        graphs = [dict(zip(listing.columns, row, strict=True)) for row in listing.rows] if listing else []
        return {"graphs": graphs, "dictionaries": dictionary_metrics(store), "sweeps": sweep_summaries(store)}

    def feature_document(feature_id: str) -> dict:
        row, exemplars = feature_page(store, feature_id, 8)
        return {**row, "exemplars": exemplars, "graphs": graphs_with(store, row["feature_id"])}

    def api_index(request: Request) -> Response:
        return _cached(request, index_document)

    def api_graph(request: Request) -> Response:
        try:
            limit = _edge_limit(request)
        except ValueError as exc:
            return _error(exc, 400)
        return _cached(request, graph_document, store, request.path_params["slug"], limit)

    def api_feature(request: Request) -> Response:
        return _cached(request, feature_document, request.path_params["feature_id"])

    def _cached(request: Request, question: Callable[..., dict], *args: object) -> Response:
        """The question's answer as JSON (timestamps as text), kept until the store changes; 404 with the
        message when the question fails."""
        key = f"{request.url.path}?{request.url.query}"
        try:
            body = answers.answer(key, lambda: _encoded(question(*args)))
        except CircuitDBError as exc:
            return _error(exc)
        return Response(body, media_type="application/json")

    async def api_supernodes(request: Request) -> Response:
        """The viewer's only write: a named group of nodes, into the graph's `graph_annotations` partition."""
        try:
            body = await _json_body(request)
            saved = save_supernode(store, request.path_params["slug"], str(body["name"]), list(body["node_ids"]))
        except (CircuitDBError, ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return _json({"supernodes": saved})

    def feature_on_typed_text(feature_id: str, text: str):
        from circuitdb.dictionaries.stored import stored_dictionary
        from circuitdb.features import feature_on_text
        from circuitdb.store import parse_feature_id

        name, layer, index = parse_feature_id(feature_id)
        coder, meta = stored_dictionary(store, name, layer)
        check_token_count(project.model, text)
        return feature_on_text(project.model, coder, meta["input_hook"], index, text)

    def features_on_typed_text(text: str):
        from circuitdb.dictionaries.stored import stored_set
        from circuitdb.features import ranked_text_matches

        dictionaries = stored_set(store, project.config.dictionaries.name)
        check_token_count(project.model, text)
        return ranked_text_matches(store, project.model, dictionaries, text, 10, False)

    async def api_feature_text(request: Request) -> Response:
        """The feature's activation on each token of a text the reader types (POST: runs the model)."""
        try:
            text = _typed_text(await _json_body(request))
            found = await model_queue.run(feature_on_typed_text, request.path_params["feature_id"], text)
        except Refused as exc:
            return _error(exc, exc.status)
        except (CircuitDBError, ValueError, KeyError, TypeError) as exc:
            return _error(exc, 400)
        return _json({"tokens": found["token"].to_list(), "values": found["activation"].to_list()})

    async def api_search(request: Request) -> Response:
        """The features most active on a text (pooled over its tokens), as `circuitdb search text` ranks them
        (POST with a JSON body: another site's page cannot make a browser send one, so cannot run the model)."""
        try:
            text = _typed_text(await _json_body(request))
            found = await model_queue.run(features_on_typed_text, text)
        except Refused as exc:
            return _error(exc, exc.status)
        except (CircuitDBError, ValueError) as exc:
            return _error(exc, 400)
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
            Route("/api/search", api_search, methods=["POST"]),
            Route("/static/plotly.js", plotly),
            Route("/favicon.ico", lambda _: Response(status_code=204)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


def serve(project: Project, host: str, port: int) -> None:
    """Serve until Ctrl-C (127.0.0.1 by default: this machine only)."""
    import uvicorn

    uvicorn.run(make_app(project), host=host, port=port, log_level="warning")
