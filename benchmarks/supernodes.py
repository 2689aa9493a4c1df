"""Automatic supernodes and graph diffs on a built store (the embedded model and its transcoders).

    python benchmarks/supernodes.py [--store DIR] [--graphs 3] [--families 10] [--against plt-noskip]
                                    [--screenshots docs]

Prints one JSON line: ari (mean adjusted Rand index of the grouping on --families planted families), pair_precision
and pair_recall (pairs of features grouped together against the store's hand-made supernodes, null where there
are none), validated_groups (per graph: groups validated, groups that passed), seconds_per_graph (grouping and
validation of the --graphs largest graphs, model loaded), diff_seconds (two graphs of the largest graph's prompt,
each capped at 7,500 features: its graph and, with --against, that dictionary set's graph of the prompt (a
`dictionary train` set: the decoder rule), else one for its second logit; built if missing; stored as `graph
diff` stores it), vector_store_import_seconds (importing LanceDB, which the decoder rule needs, once a process).
--screenshots saves the compare page of that diff (a matched feature clicked) and the largest graph's page with its most
effective automatic supernode selected.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote

# benchmarks/query.py shadows the `query` package when a script here runs: leave this folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import polars as pl  # noqa: E402

from circuitdb.attribution.pipeline import NamedTranscoders, build_graph  # noqa: E402
from circuitdb.attribution.targets import TOP_LOGITS_TARGET, TargetSpec  # noqa: E402
from circuitdb.circuits.auto_supernodes import auto_supernodes, graph_signals  # noqa: E402
from circuitdb.circuits.diff import diff_graphs  # noqa: E402
from circuitdb.circuits.supernodes import adjusted_rand_index, group_features, planted_family  # noqa: E402
from circuitdb.project import Project  # noqa: E402
from circuitdb.store import read_table  # noqa: E402


def planted_ari(families: int) -> float:
    scores = []
    for seed in range(families):
        features, signals, truth = planted_family(seed + 1000)
        found = {node: f"g{k}" for k, group in enumerate(group_features(features, signals)) for node in group.node_ids}
        scores.append(adjusted_rand_index(truth, [found.get(node, node) for node in features["node_id"]]))
    return statistics.mean(scores)


def pair_agreement(store, named) -> tuple[float | None, float | None]:
    """Precision and recall of same-group pairs of the automatic grouping against hand-made supernodes."""
    saved = read_table(store, "graph_annotations")
    hand = saved.filter((pl.col("kind").fill_null("supernode") == "supernode") & (pl.col("source").is_null()))
    hand = hand.filter(~pl.col("deleted").fill_null(False))
    found_pairs, hand_pairs = set(), set()
    for slug in hand["slug"].unique().to_list():
        features, signals = graph_signals(store, slug, named.transcoders)
        for group in group_features(features, signals):
            found_pairs |= {(slug, *sorted(pair)) for pair in itertools.combinations(group.node_ids, 2)}
        for node_ids in hand.filter(pl.col("slug") == slug)["node_ids"].to_list():
            members = [n for n in node_ids if n in set(features["node_id"])]
            hand_pairs |= {(slug, *sorted(pair)) for pair in itertools.combinations(members, 2)}
    if not hand_pairs:
        return None, None
    shared = len(found_pairs & hand_pairs)
    return (shared / len(found_pairs) if found_pairs else 0.0), shared / len(hand_pairs)


def same_prompt_pair(store, project, named, slug: str, against: str | None) -> str:
    """A second graph of `slug`'s prompt: built with dictionary set `against`, else for its second most probable
    logit (built when missing)."""
    graphs = read_table(store, "graphs")
    row = graphs.filter(pl.col("slug") == slug).row(0, named=True)
    built = graphs.filter((pl.col("prompt") == row["prompt"]) & (pl.col("slug") != slug))
    built = built.filter(pl.col("dictionaries") == (against or row["dictionaries"]))
    if not built.is_empty():
        return built["slug"][0]
    target = TargetSpec((row["top_logits"][1],)) if against is None else TOP_LOGITS_TARGET
    other = named if against is None else NamedTranscoders(project.transcoders(against), against)
    graph, _ = build_graph(store, project.model, row["prompt"], other, project.config.attribution, target=target)
    return graph["slug"]


CLICK_MATCHED_FEATURE = (
    "() => [...document.querySelectorAll('#plot .node.ringed')].find(n => /^[0-9]+_/.test(n.dataset.id))"
    ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
)


def screenshots(project, slug: str, other: str, supernode: str | None, folder: Path) -> None:
    """docs-style pictures of the diff's compare page and of the graph's automatic supernode."""
    from playwright.sync_api import sync_playwright

    from query.viewer.app import serve_in_background

    folder.mkdir(parents=True, exist_ok=True)
    url, server = serve_in_background(project)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(f"{url}/compare/{slug}/{other}")
        page.wait_for_selector("#compare-page[data-ready='1']", timeout=300_000)
        page.evaluate(CLICK_MATCHED_FEATURE)
        page.wait_for_selector("#match-text", timeout=30_000)
        page.screenshot(path=str(folder / "diff.png"), full_page=True)
        if supernode is not None:
            chosen = quote(f"group:{supernode}")
            page.goto(f"{url}/graph/{slug}#nodes=0.6&edges=0.8&errors=hide&sel={chosen}")
            page.wait_for_selector("#group-card", timeout=300_000)
            page.locator("#group-card").scroll_into_view_if_needed()
            page.screenshot(path=str(folder / "supernodes-auto.png"))
        browser.close()
    server.should_exit = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="a store built by `make demo` (default: the configured one)")
    parser.add_argument("--graphs", type=int, default=3)
    parser.add_argument("--families", type=int, default=10)
    parser.add_argument("--against", default=None, help="a second dictionary set of the store for the diff")
    parser.add_argument("--screenshots", default=None, help="save the compare page and a supernode here")
    args = parser.parse_args()
    project = Project.open(overrides={"store": args.store}).built()
    store, cfg = project.store, project.config.attribution
    named = NamedTranscoders(project.transcoders(cfg.dictionaries), cfg.dictionaries)
    graphs = read_table(store, "graphs").filter((pl.col("dictionaries") == named.name) & (pl.col("target") == ""))
    largest = graphs.sort("n_nodes_pruned", descending=True)["slug"].head(args.graphs).to_list()
    model = project.model  # loaded before the clock starts, as in a long-lived process
    validated, seconds, results_of = {}, [], {}
    for slug in largest:
        started = time.perf_counter()
        results = auto_supernodes(store, model, named, cfg, slug)
        seconds.append(time.perf_counter() - started)
        validated[slug] = {"validated": len(results), "passed": sum(r.passed for r in results)}
        results_of[slug] = results
    precision, recall = pair_agreement(store, named)
    other = same_prompt_pair(store, project, named, largest[0], args.against)
    started = time.perf_counter()
    import circuitdb.store.vectors  # noqa: F401  LanceDB, which the decoder rule reads: once per process

    import_seconds = time.perf_counter() - started
    started = time.perf_counter()
    diff_graphs(store, largest[0], other)
    diff_seconds = time.perf_counter() - started
    if args.screenshots:
        passed = [r for r in results_of[largest[0]] if r.passed]
        best = max(passed, key=lambda r: abs(r.effect)).name if passed else None
        screenshots(project, largest[0], other, best, Path(args.screenshots))
    print(
        json.dumps(
            {
                "ari": round(planted_ari(args.families), 4),
                "pair_precision": precision if precision is None else round(precision, 3),
                "pair_recall": recall if recall is None else round(recall, 3),
                "validated_groups": validated,
                "seconds_per_graph": round(statistics.mean(seconds), 2),
                "diff_seconds": round(diff_seconds, 3),
                "vector_store_import_seconds": round(import_seconds, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
