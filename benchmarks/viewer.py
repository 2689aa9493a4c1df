"""How fast the viewer answers on a built store, in headless Chromium (Debian's, driven by Playwright).

    python benchmarks/viewer.py [--store DIR] [--repeats N] [--screenshots DIR]

Prints one JSON line: first_render_s (the largest graph's page, from navigation until it is fully drawn,
median of N fresh pages), interactive_render_s (the same with the browser warm: scripts cached, the
labelled graph drawn and clickable), graph_nodes_rendered, overlapping_nodes (pairs of drawn node markers
whose boxes overlap, as the browser laid them out), feature_page_s (a feature page until its exemplars are
drawn, median), subgraph_scores_s (pin → the subgraph's scores: the 10 features of most influence pinned,
median), intervention_s (ablating them from the page, the model loaded, median of 3), api_p50_ms (median
over the index, feature and graph API calls, each N times).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import urllib.request
from pathlib import Path

# benchmarks/query.py shadows the `query` package when a script here runs: leave this folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import polars as pl  # noqa: E402

from circuitdb.project import Project  # noqa: E402
from circuitdb.store import read_table  # noqa: E402
from query.viewer.app import serve_in_background  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _timed_ms(url: str, body: dict | None = None) -> float:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
    return (time.perf_counter() - start) * 1000


CLICK_TOP_FEATURE = (
    "() => [...document.querySelectorAll('#plot .node')].find(n => /^[0-9]+_/.test(n.dataset.id))"
    ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
)


def _screenshots(browser, url: str, slug: str, feature: str, pinned: list[str], folder: Path) -> None:
    """The graph page (a node's card; pinned features, their scores and an ablation; a supernode), the
    feature page and the index, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{url}/graph/{slug}")
    page.wait_for_selector("#plot[data-ready='1']", timeout=120_000)
    page.evaluate(CLICK_TOP_FEATURE)
    page.wait_for_selector("#card h3", timeout=30_000)
    page.screenshot(path=str(folder / "graph.png"))
    state = f"#pins={','.join(pinned[:4])}&sel={pinned[0]}&nodes=0.6&edges=0.8&errors=dim&groups=[]"
    page.close()
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{url}/graph/{slug}{state}")
    page.wait_for_selector("#plot[data-ready='1']", timeout=120_000)
    page.wait_for_selector("#sub-replacement", timeout=60_000)
    page.click("#intervene")
    page.wait_for_selector("#changes", timeout=120_000)
    page.locator("#intervention").scroll_into_view_if_needed()
    page.screenshot(path=str(folder / "graph-pinned.png"))
    groups = json.dumps([["capital cities", *pinned[:4]]]).replace(" ", "%20")
    page.close()
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{url}/graph/{slug}#nodes=0.6&edges=0.8&errors=hide&groups={groups}&sel=group:capital%20cities")
    page.wait_for_selector("#group-card", timeout=120_000)
    page.screenshot(path=str(folder / "graph-supernode.png"))
    page.goto(f"{url}/feature/{feature}")
    page.wait_for_selector("#feature-page[data-ready='1']", timeout=120_000)
    page.screenshot(path=str(folder / "feature.png"))
    page.goto(f"{url}/")
    page.wait_for_selector("#graphs tr >> nth=1", timeout=120_000)
    page.wait_for_timeout(500)  # the metrics plot
    page.screenshot(path=str(folder / "index.png"))
    page.close()


def _render(opener, url: str) -> tuple[float, int, int]:
    """Seconds from navigation to the drawn, clickable page (in a new page of `opener`: a browser, so a
    fresh cache, or a context, which keeps its cache); nodes drawn; overlapping node boxes."""
    page = opener.new_page()
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#plot[data-ready='1']", timeout=120_000)
    seconds = time.perf_counter() - start
    drawn = int(page.get_attribute("#plot", "data-nodes"))
    overlaps = page.evaluate("() => drawnOverlaps(document.getElementById('plot'))")
    page.close()
    return seconds, drawn, overlaps


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="a store built by `make demo` (default: the configured one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--screenshots", default=None, help="also save the index, graph and feature pages here")
    args = parser.parse_args()
    project = Project.open(overrides={"store": args.store}).built()
    store = project.store
    nodes = read_table(store, "graph_nodes", ["slug", "kind", "feature_id"])
    slug = nodes.group_by("slug").len().sort("len", descending=True)["slug"][0]  # the largest graph
    feature = nodes.filter((pl.col("slug") == slug) & (pl.col("kind") == "feature"))["feature_id"][0]
    url, server = serve_in_background(project)
    document = json.loads(urllib.request.urlopen(f"{url}/api/graph/{slug}").read())
    ranked = sorted((n for n in document["nodes"] if n["kind"] == "feature"), key=lambda n: -n["score"])
    pinned = [n["node_id"] for n in ranked[:10]]
    renders, warm, features, rendered, overlaps = [], [], [], 0, 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(
            viewport={"width": 1400, "height": 900}
        )  # one browser cache: the warm renders reuse plotly.js
        for _ in range(args.repeats):
            renders.append(
                _render(browser.new_context(viewport={"width": 1400, "height": 900}), f"{url}/graph/{slug}")[0]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            start = time.perf_counter()
            page.goto(f"{url}/feature/{feature}")
            page.wait_for_selector("#feature-page[data-ready='1']", timeout=120_000)
            features.append(time.perf_counter() - start)
            page.close()
        _render(context, f"{url}/graph/{slug}")
        for _ in range(args.repeats):
            seconds, rendered, overlaps = _render(context, f"{url}/graph/{slug}")
            warm.append(seconds)
        scores = [_timed_ms(f"{url}/api/graph/{slug}/subgraph", {"node_ids": pinned}) for _ in range(args.repeats)]
        ablate = {"node_ids": pinned, "mode": "zero", "value": 0, "freeze_attention": True, "generate": 8}
        _timed_ms(f"{url}/api/graph/{slug}/intervene", ablate)  # loads the model
        interventions = [_timed_ms(f"{url}/api/graph/{slug}/intervene", ablate) for _ in range(3)]
        if args.screenshots:
            _screenshots(browser, url, slug, feature, pinned, Path(args.screenshots))
        browser.close()
    calls = [f"{url}/api/index", f"{url}/api/feature/{feature}", f"{url}/api/graph/{slug}"]
    api = [_timed_ms(call) for call in calls for _ in range(args.repeats)]
    server.should_exit = True
    print(
        json.dumps(
            {
                "first_render_s": round(statistics.median(renders), 3),
                "interactive_render_s": round(statistics.median(warm), 3),
                "graph_nodes_rendered": rendered,
                "overlapping_nodes": overlaps,
                "subgraph_scores_s": round(statistics.median(scores) / 1000, 3),
                "intervention_s": round(statistics.median(interventions) / 1000, 3),
                "feature_page_s": round(statistics.median(features), 3),
                "api_p50_ms": round(statistics.median(api), 1),
                "api_ms_by_call": {
                    c.split("/api/")[1].split("/")[0]: round(statistics.median(api[i::3]), 1)
                    for i, c in enumerate(calls)
                },
            }
        )
    )


if __name__ == "__main__":
    main()
