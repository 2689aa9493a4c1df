"""`circuitdb serve`: a web app over the store: graph pages to read, pin, group, score and intervene on, feature
pages, the index. It writes only supernodes, pinned sets and interventions.

Pages are thin HTML shells; their data comes from the JSON API under `/api/` (the same calls the CLI
makes, in query/questions.py and query/graph_view.py). Graphs are drawn as plain SVG (static/graph_draw.js),
charts with plotly.js, which the `plotly` wheel ships: nothing is fetched from the network at view time.
Hand-written JavaScript lives in `static/`.
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

from circuitdb.circuits.diff import page_document
from circuitdb.errors import CircuitDBError
from circuitdb.project import Project
from circuitdb.store.graphs import graph_row
from query.engine import keep_catalog
from query.graph_view import (
    delete_annotation,
    graph_document,
    rename_annotation,
    save_annotation,
    set_document,
    steerable_nodes,
    subgraph_scores,
)
from query.questions import dictionary_metrics, feature_page, graph_listing, graphs_with, node_edges, sweep_summaries
from query.viewer.access import Access, guarded
from query.viewer.model_queue import ModelQueue, Refused, check_text_length, check_token_count
from query.viewer.pages import STATIC, compare_body, error_page, graph_body, page, plotly_js
from query.viewer.response_cache import ResponseCache

MAX_EDGES = 3000
"""Edges a graph page loads (those of most influence on its logit); its slider shows fewer."""
EDGES_LIMIT = 200_000
"""The most edges one request may ask for (`max_edges`)."""
ANNOTATION_KINDS = {"supernodes": "supernode", "pins": "pins"}
"""URL word → `graph_annotations.kind`."""
STEER_MODES = ("zero", "scale", "set")
MAX_GENERATE = 32
"""Tokens a page's intervention may generate."""


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


def _whole_number(request: Request, name: str, default: int, most: int) -> int:
    given = request.query_params.get(name, str(default))
    if not given.isdigit() or not 1 <= int(given) <= most:
        raise ValueError(f"{name} must be a whole number from 1 to {most}, not {given!r}")
    return int(given)


def _annotation_kind(request: Request) -> str:
    """`graph_annotations.kind` of the URL's word (supernodes, pins)."""
    if request.path_params["kind"] not in ANNOTATION_KINDS:
        raise ValueError("annotations are supernodes or pins")
    return ANNOTATION_KINDS[request.path_params["kind"]]


def _node_ids(body: dict) -> list[str]:
    node_ids = body.get("node_ids")
    if not isinstance(node_ids, list) or not all(isinstance(n, str) for n in node_ids) or len(node_ids) > 10_000:
        raise ValueError('the body needs node_ids: a list of node ids, e.g. {"node_ids": ["12_345_6"]}')
    return node_ids


def _steering(body: dict) -> tuple[str, float, bool, int]:
    """mode, value, freeze_attention and tokens to generate of a page's intervention, checked."""
    mode, value = body.get("mode", "zero"), body.get("value", 0.0)
    if mode not in STEER_MODES:
        raise ValueError(f"mode must be one of {', '.join(STEER_MODES)}, not {mode!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > 1e6:
        raise ValueError(f"value must be a number (at most 1e6 in size), not {value!r}")
    freeze, generate = body.get("freeze_attention", True), body.get("generate", 0)
    if not isinstance(freeze, bool):
        raise ValueError("freeze_attention must be true or false")
    if isinstance(generate, bool) or not isinstance(generate, int) or not 0 <= generate <= MAX_GENERATE:
        raise ValueError(f"generate must be a whole number from 0 to {MAX_GENERATE}")
    return mode, float(value), freeze, generate


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


def _checked_page(check: Callable[[], object], title: str, body: str, scripts: list[str]) -> HTMLResponse:
    """The page (common.js first), or a page saying what is not in the store (a graph, a feature, a set)."""
    try:
        check()
    except CircuitDBError as exc:
        return error_page(str(exc))
    return HTMLResponse(page(title, body, ["common.js", *scripts]))


def make_app(project: Project, access: Access | None = None) -> Starlette:
    """The app over the project's store (every request reads the tables as they are now) and its model, loaded
    on the first request that runs one (text search, "try your text", interventions): pages that only read
    never wait for it. `access` says which Host names are answered and whether writes need a token."""
    store = project.store
    keep_catalog(store)  # views made once, remade when a table's files change
    model_queue = ModelQueue()
    answers = ResponseCache(store)

    def index(_: Request) -> HTMLResponse:
        return HTMLResponse(page("index", '<main id="index"></main>', ["plotly.js", "common.js", "index.js"]))

    def graph(request: Request) -> HTMLResponse:
        slug = request.path_params["slug"]
        return _checked_page(lambda: graph_row(store, slug), slug, graph_body(slug), ["graph_draw.js", "graph.js"])

    def compare(request: Request) -> HTMLResponse:
        slugs = (request.path_params["a"], request.path_params["b"])
        body = compare_body(*slugs)
        scripts = ["graph_draw.js", "compare.js"]
        return _checked_page(lambda: [graph_row(store, s) for s in slugs], " vs ".join(slugs), body, scripts)

    def prompt_set(request: Request) -> HTMLResponse:
        name = request.path_params["name"]
        body = f'<main id="set-page" class="graph-view" data-set="{html.escape(name)}"><div class="plot" id="plot">'
        body += '</div><aside id="side"><div id="summary"></div><div id="panel"></div></aside></main>'
        return _checked_page(lambda: set_document(store, name, 1), name, body, ["graph_draw.js", "set.js"])

    def api_set(request: Request) -> Response:
        return _cached(request, set_document, store, request.path_params["name"])

    def feature(request: Request) -> HTMLResponse:
        feature_id = request.path_params["feature_id"]
        body = f'<main id="feature-page" data-feature="{html.escape(feature_id)}"></main>'
        return _checked_page(lambda: feature_page(store, feature_id, 1), feature_id, body, ["plotly.js", "feature.js"])

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
        slug, logit = request.path_params["slug"], request.query_params.get("logit") or None
        try:
            graph_row(store, slug)
        except CircuitDBError as exc:
            return _error(exc)
        return _cached(request, graph_document, store, slug, limit, logit, failure=400)  # a logit it lacks

    def api_diff(request: Request) -> Response:
        """Two graphs of one prompt matched by the rule their difference calls for (`graph diff`)."""
        return _cached(request, page_document, store, request.path_params["a"], request.path_params["b"], failure=400)

    def api_node_edges(request: Request) -> Response:
        """A node's strongest incoming or outgoing edges from the whole stored edge table."""
        node, direction = request.query_params.get("node", ""), request.query_params.get("direction", "in")
        try:
            if direction not in ("in", "out"):
                raise ValueError(f"direction must be in or out, not {direction!r}")
            k = _whole_number(request, "k", 20, 1000)
        except ValueError as exc:
            return _error(exc, 400)
        ends = (None, node) if direction == "in" else (node, None)
        return _cached(request, _edge_rows, request.path_params["slug"], *ends, k)

    def _edge_rows(slug: str, source: str | None, target: str | None, k: int) -> dict:
        found = node_edges(store, slug, source, target, k)
        return {"edges": [dict(zip(found.columns, row, strict=True)) for row in found.rows]}

    def api_feature(request: Request) -> Response:
        return _cached(request, feature_document, request.path_params["feature_id"])

    def _cached(request: Request, question: Callable[..., dict], *args: object, failure: int = 404) -> Response:
        """The question's answer as JSON (timestamps as text), kept until the store changes; `failure` (404)
        with the message when the question fails."""
        key = f"{request.url.path}?{request.url.query}"
        try:
            body = answers.answer(key, lambda: _encoded(question(*args)))
        except CircuitDBError as exc:
            return _error(exc, failure)
        return Response(body, media_type="application/json")

    async def api_subgraph(request: Request) -> Response:
        """Replacement and completeness of the subgraph the pinned nodes span (read-only, POST for the list)."""
        try:
            node_ids = _node_ids(await _json_body(request))
            return _json(subgraph_scores(store, request.path_params["slug"], node_ids))
        except (CircuitDBError, ValueError) as exc:
            return _error(exc, 400)

    async def api_annotations(request: Request) -> Response:
        """Save a supernode or pinned set ({name, node_ids}) or rename one ({name, new_name}), into the
        graph's `graph_annotations` partitions."""
        slug = request.path_params["slug"]
        try:
            kind = _annotation_kind(request)
            body = await _json_body(request)
            name = body.get("name")
            if not isinstance(name, str):
                raise ValueError('the body needs a name: {"name": "...", "node_ids": [...]}')
            if isinstance(body.get("new_name"), str):
                saved = rename_annotation(store, slug, kind, name, body["new_name"])
            else:
                saved = save_annotation(store, slug, kind, name, _node_ids(body))
        except (CircuitDBError, ValueError) as exc:
            return _error(exc, 400)
        return _json({request.path_params["kind"]: saved})

    def api_delete_annotation(request: Request) -> Response:
        try:
            left = delete_annotation(
                store, request.path_params["slug"], _annotation_kind(request), request.path_params["name"]
            )
        except (CircuitDBError, ValueError) as exc:
            return _error(exc, 400)
        return _json({request.path_params["kind"]: left})

    def intervene_on_graph(slug: str, node_ids: list[str], steering: tuple[str, float, bool, int]) -> dict:
        from circuitdb.attribution.steering import Clamp, Steered, SteeringRun, steer_prompt, steered_set

        prompt, nodes = steerable_nodes(store, slug, node_ids)
        mode, value, freeze, generate = steering
        steered = [Steered(feature_id, [position]) for feature_id, position in nodes]
        run = SteeringRun(prompt, steered, Clamp(mode, value), freeze, generate, slug)
        transcoders = project.transcoders(steered_set(run))
        row, changes = steer_prompt(store, project.model, transcoders, project.config.attribution, run, 10)
        keys = ("token", "p_before", "p_after", "change")
        return {key: row[key] for key in ("run_id", "top_token_before", "top_token_after", "generated")} | {
            "changes": [dict(zip(keys, change, strict=True)) for change in changes]
        }

    async def api_intervene(request: Request) -> Response:
        """Ablate or steer the pinned feature nodes at their positions (POST: runs the model); the run is
        stored in `interventions` with the graph's slug."""
        try:
            body = await _json_body(request)
            node_ids, steering = _node_ids(body), _steering(body)
            found = await model_queue.run(intervene_on_graph, request.path_params["slug"], node_ids, steering)
        except Refused as exc:
            return _error(exc, exc.status)
        except (CircuitDBError, ValueError) as exc:
            return _error(exc, 400)
        return _json(found)

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

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/graph/{slug}", graph),
            Route("/compare/{a}/{b}", compare),
            Route("/set/{name}", prompt_set),
            Route("/api/set/{name}", api_set),
            Route("/feature/{feature_id:path}", feature),
            Route("/api/index", api_index),
            Route("/api/graph/{slug}", api_graph),
            Route("/api/diff/{a}/{b}", api_diff),
            Route("/api/graph/{slug}/edges", api_node_edges),
            Route("/api/graph/{slug}/subgraph", api_subgraph, methods=["POST"]),
            Route("/api/graph/{slug}/intervene", api_intervene, methods=["POST"]),
            Route("/api/graph/{slug}/{kind}", api_annotations, methods=["POST"]),
            Route("/api/graph/{slug}/{kind}/{name:path}", api_delete_annotation, methods=["DELETE"]),
            Route("/api/feature/{feature_id:path}/text", api_feature_text, methods=["POST"]),
            Route("/api/feature/{feature_id:path}", api_feature),
            Route("/api/search", api_search, methods=["POST"]),
            Route("/static/plotly.js", plotly),
            Route("/favicon.ico", lambda _: Response(status_code=204)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    return guarded(app, access or Access())


def serve(project: Project, host: str, port: int, access: Access) -> None:
    """Serve until Ctrl-C on `host`:`port`, as `access` allows."""
    import uvicorn

    uvicorn.run(make_app(project, access), host=host, port=port, log_level="warning")


def serve_in_background(project: Project) -> tuple[str, object]:
    """Serve on a free loopback port from a daemon thread (browser tests, benchmarks, screenshots): the base URL
    and the uvicorn server (`server.should_exit = True` stops it)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(project), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server
