"""Graph diffs: each matching rule on hand-built graphs whose right answer is worked out by hand, the edge changes
between matched nodes, and a stored diff read back by SQL and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from circuitdb.circuits.diff import DiffSettings, activation_correlation, diff_graphs, match_nodes, match_rule
from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, read_table, write_partition

TOKENS = [(10, "The"), (11, " capital"), (12, " of"), (13, " is")]


def _nodes(features: list[tuple], errors: list[tuple[int, int]], logits: list[tuple[int, str]], n_layers: int):
    """graph_nodes rows: features (feature_id, position, activation, influence, label), errors (layer, position),
    every token, logits (token id, token) at the last position."""
    rows = []
    for feature_id, position, activation, influence, label in features:
        _, layer, index = feature_id.split("/")
        node_id = f"{layer}_{index}_{position}"
        rows.append((node_id, "feature", feature_id, int(layer), position, int(index), activation, influence, label))
    rows += [(f"err_{layer}_{p}", "error", None, layer, p, -1, 0.0, 0.01, "error") for layer, p in errors]
    rows += [(f"E_{t}_{p}", "token", None, -1, p, t, 0.0, 0.1, "token") for p, (t, _) in enumerate(TOKENS)]
    rows += [(f"{n_layers + 1}_{t}_3", "logit", None, n_layers, 3, t, 0.5, 0.0, "output") for t, _ in logits]
    frame = pl.DataFrame(
        rows,
        schema=["node_id", "kind", "feature_id", "layer", "position", "index", "activation", "influence", "label"],
        orient="row",
    )
    tokens = [TOKENS[p][1] for p in frame["position"]]
    logit_tokens = {f"{n_layers + 1}_{t}_3": token for t, token in logits}
    return frame.with_columns(
        token=pl.Series([logit_tokens.get(n, t) for n, t in zip(frame["node_id"], tokens, strict=True)])
    )


def _pairs(matched: pl.DataFrame) -> set[tuple[str, str]]:
    return set(matched.select("a", "b").iter_rows())


def _token_pairs() -> set[tuple[str, str]]:
    return {(f"E_{t}_{p}", f"E_{t}_{p}") for p, (t, _) in enumerate(TOKENS)}


def test_the_rule_follows_what_differs() -> None:
    base = {"slug": "a", "token_ids": [1, 2], "model": "m", "dictionaries": "plt"}
    assert match_rule(base, base | {"slug": "b"}) == "identity"
    assert match_rule(base, base | {"dictionaries": "clt"}) == "decoder"
    assert match_rule(base, base | {"model": "m-instruct"}) == "models"
    with pytest.raises(CircuitDBError, match="different token sequences"):
        match_rule(base, base | {"token_ids": [1, 3]})


def test_identity_matches_a_feature_only_at_its_position() -> None:
    a = _nodes([("plt/1/5", 2, 1.0, 0.3, "x"), ("plt/2/7", 3, 1.0, 0.2, "y")], [(1, 2)], [(99, " Paris")], 12)
    b = _nodes(
        [("plt/1/5", 2, 1.0, 0.3, "x"), ("plt/2/7", 1, 1.0, 0.2, "y"), ("plt/0/3", 2, 1.0, 0.1, "z")],
        [(1, 2), (0, 1)],
        [(99, " Paris"), (98, " London")],
        12,
    )
    matched = match_nodes(a, b, "identity", (12, 12))
    assert _pairs(matched) == {("1_5_2", "1_5_2"), ("err_1_2", "err_1_2"), ("13_99_3", "13_99_3")} | _token_pairs()
    assert set(matched["score"]) == {1.0}


def test_decoder_matches_are_one_to_one_at_one_layer_and_position() -> None:
    """a1·b1 = a2·b2 = 0.8 and a1·b2 = a2·b1 = 0.6: the two 0.8 pairs; a3·b4 = 0.436 is below 0.5; b3 sits at
    another position; b5 at another layer (its decoder equal to a1's)."""
    features_a = [("plt/1/1", 2, 1.0, 0.3, ""), ("plt/1/2", 2, 1.0, 0.2, ""), ("plt/2/3", 2, 1.0, 0.1, "")]
    features_b = [("clt/1/1", 2, 1.0, 0.3, ""), ("clt/1/2", 2, 1.0, 0.2, ""), ("clt/1/3", 3, 1.0, 0.1, "")]
    features_b += [("clt/2/4", 2, 1.0, 0.1, ""), ("clt/3/5", 2, 1.0, 0.1, "")]
    a, b = _nodes(features_a, [], [(99, " Paris")], 12), _nodes(features_b, [], [(99, " Paris")], 12)
    vectors = {
        "plt/1/1": np.array([1.0, 0, 0]),
        "plt/1/2": np.array([0, 1.0, 0]),
        "plt/2/3": np.array([0, 0, 1.0]),
        "clt/1/1": np.array([0.8, 0.6, 0]),
        "clt/1/2": np.array([0.6, 0.8, 0]),
        "clt/1/3": np.array([1.0, 0, 0]),
        "clt/2/4": np.array([0, 0.9, 0.436]) / np.linalg.norm([0, 0.9, 0.436]),
        "clt/3/5": np.array([1.0, 0, 0]),
    }
    features = match_nodes(a, b, "decoder", (12, 12), vectors).filter(pl.col("rule") == "decoder")
    assert _pairs(features) == {("1_1_2", "1_1_2"), ("1_2_2", "1_2_2")}
    assert features["score"].to_list() == pytest.approx([0.8, 0.8])
    looser = match_nodes(a, b, "decoder", (12, 12), vectors, DiffSettings(min_cosine=0.4))
    assert ("2_3_2", "2_4_2") in _pairs(looser)
    with pytest.raises(CircuitDBError, match="no decoder vector stored for plt/1/1"):
        match_nodes(a, b, "decoder", (12, 12), {k: v for k, v in vectors.items() if k != "plt/1/1"})


def test_models_match_by_relative_depth_and_label_words() -> None:
    """A (30 layers) layer 15 sits at 15.5/30 = 0.517; B (12 layers) layer 6 at 0.542 (within 0.1), layer 1 at
    0.125 (not). Labels {capital, cities, paris, berlin} and {capital, paris, rome}: 2 shared of 5 = 0.4. A's
    error of layer 15 goes with B's of layer 6 (gap 0.025; layer 5's is 0.058)."""
    a = _nodes([("base/15/1", 2, 1.0, 0.3, "capital cities → Paris Berlin")], [(15, 2)], [(99, " Paris")], 30)
    b = _nodes(
        [("it/6/4", 2, 1.0, 0.3, "capital → Paris, Rome"), ("it/1/9", 2, 1.0, 0.3, "capital → Paris, Rome")],
        [(6, 2), (5, 2)],
        [(99, " Paris")],
        12,
    )
    matched = match_nodes(a, b, "models", (30, 12))
    assert _pairs(matched) == {("15_1_2", "6_4_2"), ("err_15_2", "err_6_2"), ("31_99_3", "13_99_3")} | _token_pairs()
    assert matched.filter(pl.col("rule") == "label")["score"].to_list() == pytest.approx([0.4])
    stricter = match_nodes(a, b, "models", (30, 12), settings=DiffSettings(min_label_overlap=0.5))
    assert ("15_1_2", "6_4_2") not in _pairs(stricter)


def test_activation_correlation_over_positions() -> None:
    """[0, 1, 2, 0] against [0, 2, 4, 0]: 1; [0, 0, 3, 0] against [0, 1, 0, 0]: -0.75 / (2.598 · 0.866) = -1/3."""
    a = _nodes([("plt/1/1", 1, 1.0, 0.1, ""), ("plt/1/1", 2, 2.0, 0.1, ""), ("plt/1/2", 2, 3.0, 0.1, "")], [], [], 12)
    b = _nodes([("clt/1/1", 1, 2.0, 0.1, ""), ("clt/1/1", 2, 4.0, 0.1, ""), ("clt/1/2", 1, 1.0, 0.1, "")], [], [], 12)
    correlation = activation_correlation(a, b, 4, [("plt/1/1", "clt/1/1"), ("plt/1/2", "clt/1/2")])
    assert correlation[("plt/1/1", "clt/1/1")] == pytest.approx(1.0)
    assert correlation[("plt/1/2", "clt/1/2")] == pytest.approx(-1 / 3)


def _store_graph(store: Store, slug: str, nodes: pl.DataFrame, edges: list[tuple[str, str, float]]) -> None:
    now = datetime.now(UTC)
    write_partition(store, "graph_nodes", slug, nodes.with_columns(slug=pl.lit(slug)))
    write_partition(
        store,
        "graph_edges",
        slug,
        pl.DataFrame(edges, schema=["source", "target", "weight"], orient="row").with_columns(slug=pl.lit(slug)),
    )
    row = {
        "slug": slug,
        "prompt": "The capital of is",
        "tokens": [t for _, t in TOKENS],
        "token_ids": [t for t, _ in TOKENS],
    }
    row |= {"model": "m", "dictionaries": "plt", "n_active_features": 3, "n_nodes": nodes.height}
    row |= {"n_nodes_pruned": nodes.height, "n_edges_pruned": len(edges), "replacement_score": 0.5}
    row |= {"completeness_score": 0.8, "target": "", "top_logits": [" Paris"], "top_probabilities": [0.5]}
    write_partition(store, "graphs", slug, pl.DataFrame([row | {"settings": "{}", "seconds": 1.0, "created_at": now}]))


def test_a_stored_diff_has_the_edge_changes_between_matched_nodes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    a = _nodes([("plt/1/5", 2, 1.0, 0.3, "x"), ("plt/2/7", 3, 1.0, 0.2, "y")], [(1, 2)], [(99, " Paris")], 12)
    b = _nodes([("plt/1/5", 2, 1.0, 0.4, "x"), ("plt/0/3", 2, 1.0, 0.1, "z")], [(1, 2)], [(99, " Paris")], 12)
    _store_graph(store, "ga", a, [("E_12_2", "1_5_2", 1.0), ("1_5_2", "13_99_3", 0.5), ("2_7_3", "13_99_3", 0.2)])
    _store_graph(store, "gb", b, [("E_12_2", "1_5_2", 1.5), ("1_5_2", "13_99_3", 0.4), ("err_1_2", "13_99_3", 0.3)])
    diff = diff_graphs(store, "ga", "gb")
    rounded = lambda value: None if value is None else round(value, 6)  # noqa: E731  weights are stored as float32
    edges = {
        (e["source_a"], e["target_a"]): tuple(rounded(e[k]) for k in ("weight_a", "weight_b", "change"))
        for e in diff.edges.to_dicts()
    }
    assert edges == {
        ("E_12_2", "1_5_2"): (1.0, 1.5, 0.5),
        ("1_5_2", "13_99_3"): (0.5, 0.4, -0.1),
        ("err_1_2", "13_99_3"): (None, 0.3, 0.3),
    }
    counts = diff.document["counts"]
    assert (counts["shared_features"], counts["only_a"], counts["only_b"]) == (1, 1, 1)
    assert counts["shared_influence_a"] == pytest.approx(0.3 / 0.5) and counts["shared_influence_b"] == pytest.approx(
        0.8
    )
    stored = read_table(store, "graph_diffs", partitions=["ga~gb"])
    assert set(stored.filter(pl.col("node_b").is_null())["node_a"]) == {"2_7_3"}
    assert set(stored.filter(pl.col("node_a").is_null())["node_b"]) == {"0_3_2"}
    out = tmp_path / "diff.json"
    cli = str(Path(sys.executable).parent / "circuitdb")
    shown = subprocess.run(
        [cli, "graph", "diff", "ga", "gb", "--store", str(store.root), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert (
        "1 shared" in shown.stdout and "only in A" in shown.stdout and "2_7" not in shown.stdout.split("only in B")[1]
    )
    assert json.loads(out.read_text())["counts"] == counts
    other = subprocess.run(
        [cli, "graph", "diff", "ga", "nope", "--store", str(store.root)], capture_output=True, text=True
    )
    assert other.returncode == 1 and other.stderr.startswith("error:")


def test_a_set_diff_counts_recurring_features_and_paths(tmp_path: Path) -> None:
    """Three prompts under two sets of graphs, worked out by hand: A holds plt/1/5 in all three graphs and
    plt/2/7 in two, B holds plt/1/5 in the first two and plt/0/3 in all three."""
    from circuitdb.circuits.prompt_sets import SetPrompt, define_set
    from circuitdb.circuits.set_diff import diff_sets

    store = Store(tmp_path / "store")
    prompts = [SetPrompt(f"prompt {i}", "", []) for i in range(3)]
    slugs = {}
    for name in ("left", "right"):
        rows = define_set(store, name, prompts)
        slugs[name] = [f"{name}{i}" for i in range(3)]
        write_partition(store, "prompt_sets", name, rows.with_columns(slug=pl.Series(slugs[name])))
    into_logit = [("E_12_2", "1_5_2", 1.0), ("1_5_2", "13_99_3", 0.5)]
    for i in range(3):
        a = [("plt/1/5", 2, 1.0, 0.3, "x")] + ([("plt/2/7", 3, 1.0, 0.2, "y")] if i < 2 else [])
        b = [("plt/0/3", 2, 1.0, 0.1, "z")] + ([("plt/1/5", 2, 1.0, 0.4, "x")] if i < 2 else [])
        extra = [("E_13_3", "2_7_3", 0.5), ("2_7_3", "13_99_3", 0.4)] if i < 2 else []
        _store_graph(store, slugs["left"][i], _nodes(a, [], [(99, " Paris")], 12), into_logit + extra)
        edges_b = (into_logit if i < 2 else []) + [("E_12_2", "0_3_2", 1.0), ("0_3_2", "13_99_3", 0.2)]
        _store_graph(store, slugs["right"][i], _nodes(b, [], [(99, " Paris")], 12), edges_b)
    diff = diff_sets(store, "left", "right")
    counted = {
        (side, feature): (graphs, matched, match)
        for side, feature, graphs, matched, match in diff.features.select(
            "side", "feature_id", "graphs", "matched", "match"
        ).iter_rows()
    }
    assert counted == {
        ("a", "plt/1/5"): (3, 2, "plt/1/5"),
        ("a", "plt/2/7"): (2, 0, None),
        ("b", "plt/1/5"): (2, 2, "plt/1/5"),
        ("b", "plt/0/3"): (3, 0, None),
    }
    paths = {(side, path): (graphs, matched) for side, path, graphs, matched in diff.paths.drop("diff").iter_rows()}
    assert paths[("a", "token ' of' → plt/1/5 → target")] == (3, 2)
    assert paths[("a", "token ' is' → plt/2/7 → target")] == (2, 0)
    assert paths[("b", "token ' of' → plt/0/3 → target")] == (3, 0)
    assert diff.summary["prompts"] == 3 and diff.summary["rule"] == "identity"
    stored = read_table(store, "circuit_diffs", partitions=["left~right"])
    assert stored.height == 4 and stored.filter(pl.col("unmatched") > 0).height == 3  # plt/1/5 of A misses once
    cli = str(Path(sys.executable).parent / "circuitdb")
    shown = subprocess.run(
        [cli, "circuit", "diff", "left", "right", "--store", str(store.root)], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "recurring in A, unmatched in B" in shown.stdout and "plt/2/7" in shown.stdout
    unknown = subprocess.run(
        [cli, "circuit", "diff", "left", "nope", "--store", str(store.root)], capture_output=True, text=True
    )
    assert unknown.returncode == 1 and unknown.stderr.startswith("error:") and "nope" in unknown.stderr


def test_a_variant_set_is_traced_and_diffed_by_decoder_cosine(built_store: Path, tmp_path: Path, cli) -> None:
    """`dictionary train` adds a set without the skip beside the configured one; a graph of the same prompt built
    with it is diffed by the decoder rule, each match's score the cosine of the two stored decoder rows."""
    import shutil

    from circuitdb.dictionaries.stored import stored_dictionary

    store = Store(shutil.copytree(built_store, tmp_path / "store"))
    config = tmp_path / "circuitdb.yaml"
    config.write_text((built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store.root)))
    c = ("--config", str(config))
    code, out, err = cli("dictionary", "train", "noskip", "--no-skip", "-f", "json", *c)
    assert code == 0, err
    configured = read_table(store, "dictionaries").filter(pl.col("name") == "plt")
    assert sorted(row["layer"] for row in json.loads(out)) == sorted(configured["layer"])
    trained = read_table(store, "dictionaries").filter(pl.col("name") == "noskip")
    features = read_table(store, "features", ["dictionary"]).filter(pl.col("dictionary") == "noskip")
    assert features.height == int(trained["n_latents"].sum())
    assert all(
        "W_skip" not in dict(stored_dictionary(store, "noskip", layer)[0].named_parameters())
        for layer in trained["layer"]
    )

    prompt = read_table(store, "graphs")["prompt"][0]
    with config.open("a") as handle:  # keep every feature: the tiny dictionaries' features carry little influence
        handle.write("attribution:\n  node_threshold: 1.0\n  edge_threshold: 1.0\n")
    slugs = []
    for dictionaries in ("plt", "noskip"):
        code, out, err = cli("graph", "build", prompt, "--dictionaries", dictionaries, "-f", "json", *c)
        assert code == 0, err
        slugs.append(json.loads(out)["slug"])
    out_file = tmp_path / "diff.json"
    code, _, err = cli("graph", "diff", *slugs, "--min-cosine=-1", "--out", str(out_file), *c)
    assert code == 0, err
    document = json.loads(out_file.read_text())
    assert document["rule"] == "decoder"
    matched = [n for n in document["nodes"] if n["match"] == "decoder"]
    assert matched  # any cosine matches: each same-layer, same-position pair is a candidate, best first
    for node in matched:
        rows = []
        for feature_id in (node["feature_a"], node["feature_b"]):
            dictionary, layer, index = feature_id.split("/")
            rows.append(stored_dictionary(store, dictionary, int(layer))[0].W_dec[int(index)].detach().double().numpy())
        cosine = rows[0] @ rows[1] / np.linalg.norm(rows[0]) / np.linalg.norm(rows[1])
        assert node["score"] == pytest.approx(cosine, abs=1e-5)
        assert node["layer"] == int(node["feature_b"].split("/")[1])  # one layer and position only
    code, _, err = cli("dictionary", "train", "plt", *c)
    assert code == 1 and err.startswith("error:") and "configured" in err
    code, _, err = cli("dictionary", "train", "wide", "--layers", "99", *c)
    assert code == 1 and err.startswith("error:") and "layer 99" in err
