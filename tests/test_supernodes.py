"""Automatic supernodes: grouping recovers planted groups (adjusted Rand index), each signal and the linkage
against hand-computed cases."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from circuitdb.circuits.supernodes import (
    GroupingSettings,
    adjusted_rand_index,
    average_linkage,
    coactivation_similarity,
    decoder_similarity,
    group_features,
    label_similarity,
    output_similarity,
    planted_family,
)


def test_adjusted_rand_index_by_hand() -> None:
    """Truth {0,1,2},{3,4}; found {0,1},{2,3,4}: contingency [[2,1],[0,2]], pairs 1+1 = 2, rows 3+1 = 4, columns
    1+3 = 4, all 10: expected 1.6, ARI (2 - 1.6) / (4 - 1.6) = 1/6."""
    assert adjusted_rand_index([0, 0, 0, 1, 1], ["a", "a", "b", "b", "b"]) == pytest.approx(1 / 6)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0


def test_signals_by_hand() -> None:
    assert decoder_similarity(np.array([[1.0, 0], [0.6, 0.8], [-1.0, 0]])) == pytest.approx(
        np.array([[1, 0.6, 0], [0.6, 1, 0], [0, 0, 1]])
    )
    assert output_similarity(np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])) == pytest.approx(
        np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    )
    assert label_similarity(["Paris France", "paris, capital", ""])[0, 1] == pytest.approx(1 / 3)
    assert coactivation_similarity(np.array([[1.0, 0, 1], [2.0, 0, 2], [0, 1.0, 0]]))[0] == pytest.approx([1, 1, 0])


def test_average_linkage_by_hand() -> None:
    """a-b 0.9, then {a,b}-c averages (0.6 + 0.4) / 2 = 0.5: merged at 0.5, not at 0.55; d is forbidden with a."""
    similarity = np.array([[1, 0.9, 0.6, 0.9], [0.9, 1, 0.4, 0.9], [0.6, 0.4, 1, 0.0], [0.9, 0.9, 0.0, 1]])
    allowed = np.ones((4, 4), dtype=bool)
    allowed[0, 3] = allowed[3, 0] = False
    labels = average_linkage(similarity, allowed, 0.5)
    assert labels[0] == labels[1] == labels[2] != labels[3]
    labels = average_linkage(similarity, allowed, 0.55)
    assert labels[0] == labels[1] and len({labels[0], labels[2], labels[3]}) == 3


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("over_a_set", [True, False])
def test_planted_groups_are_recovered(seed: int, over_a_set: bool) -> None:
    """Noisy planted groups with a decoy each are recovered, with co-activation (a prompt set) or without (one
    graph)."""
    features, signals, truth = planted_family(seed)
    if not over_a_set:
        signals["coactivation"] = None
    groups = group_features(features, signals, GroupingSettings())
    found = {node_id: f"g{k}" for k, group in enumerate(groups) for node_id in group.node_ids}
    labels = [found.get(node_id, node_id) for node_id in features["node_id"]]  # ungrouped: a group of its own
    assert adjusted_rand_index(truth, labels) >= 0.9


PROMPT = "The quick brown fox jumps over the lazy"
SET_PROMPTS = [PROMPT, "A quick brown fox leaps over the lazy", "The quick red fox jumps over the lazy"]


def _planted_transcoders(lm, target: int, prompts: list[str]):
    """Weak random transcoders on all 12 layers, plus two planted groups of three latents (layer 3 and layer 8)
    that fire only at the last position of each prompt and write along directions that raise `target`'s logit:
    in the replacement model (errors hold the rest of each MLP's output) the groups carry the target, the other
    active latents barely do."""
    from circuitdb.attribution import Transcoders, trace
    from circuitdb.config import DictionaryConfig
    from circuitdb.dictionaries import SparseCoder

    torch.manual_seed(0)
    d = lm.d_model
    coders = {}
    for layer in range(lm.n_layers):
        coder = SparseCoder(DictionaryConfig(kind="plt", activation="relu", n_latents=32, skip=False), d, d).double()
        with torch.no_grad():
            coder.b_enc.fill_(-0.3)
            coder.W_dec.mul_(0.05)
            coder.b_dec.zero_()
        coders[layer] = coder
    # the model's own MLP inputs, prompt by prompt: planting changes none of them
    inputs = [trace(lm, lm.encode(prompt), Transcoders(coders)).mlp_in.double() for prompt in prompts]
    unembed = lm.model.get_output_embeddings().weight[target].double()
    gain = lm.model.get_submodule(lm.arch.final_norm).weight.double()
    reads = {}
    for layer in (3, 8):  # what sets the last position apart at the layer's MLP input
        apart = torch.stack([x[layer][-1] - x[layer][:-1].mean(0) for x in inputs]).mean(0)
        reads[layer] = apart / apart.norm()
    basis = torch.linalg.qr(torch.stack([reads[3], reads[8]], 1)).Q  # the groups write nothing the other reads
    push = unembed * gain - basis @ (basis.T @ (unembed * gain))
    other = torch.randn(d, dtype=torch.float64)
    other -= basis @ (basis.T @ other) + (other @ push) * push / (push @ push)
    directions = {3: push / push.norm(), 8: (push / push.norm() + 0.6 * other / other.norm())}
    with torch.no_grad():
        for layer, direction in directions.items():
            last = min(float(reads[layer] @ x[layer][-1]) for x in inputs)
            others = max(float((x[layer][:-1] @ reads[layer]).max()) for x in inputs)
            threshold = (last + others) / 2  # halfway: fires at the end only
            scale = float(inputs[0][layer][-1].norm()) / (last - threshold)  # activation there ~ the residual's norm
            for index in range(3):
                coder = coders[layer]
                coder.W_enc[index] = scale * reads[layer]
                coder.b_enc[index] = -scale * threshold
                noise = torch.randn(d, dtype=torch.float64) * 0.02  # members' directions agree to cosine ~0.97
                coder.W_dec[index] = (direction / direction.norm() + noise) * 0.5
    return Transcoders(coders, name="planted")


def test_validated_groups_are_the_planted_mechanism(deep_llama_dirs, tmp_path) -> None:
    from circuitdb.attribution.pipeline import NamedTranscoders, build_graph
    from circuitdb.attribution.replacement_model import trace
    from circuitdb.circuits.auto_supernodes import ValidationSettings, auto_supernodes
    from circuitdb.config import AttributionConfig
    from circuitdb.models import load_model
    from circuitdb.store import Store, read_table
    from circuitdb.store.graphs import write_annotation

    lm = load_model(str(deep_llama_dirs[12]), device="cpu")
    lm.model.double()
    with torch.no_grad():
        target = int(lm.model(torch.tensor([lm.encode(PROMPT)])).logits[0, -1].argmax())  # the model's next token
    transcoders = _planted_transcoders(lm, target, [PROMPT])
    ids = lm.encode(PROMPT)
    rm = trace(lm, ids, transcoders)
    planted = {(layer, index) for layer in (3, 8) for index in range(3)}
    active = zip(rm.features.layer.tolist(), rm.features.position.tolist(), rm.features.index.tolist(), strict=True)
    fired = {(layer, p, i) for layer, p, i in active if (layer, i) in planted}
    assert fired == {(layer, len(ids) - 1, index) for layer, index in planted}  # the groups fire at the end only

    store = Store(tmp_path / "store")
    cfg = AttributionConfig(node_threshold=0.95, edge_threshold=0.99)
    named = NamedTranscoders(transcoders, "planted")
    row, _ = build_graph(store, lm, PROMPT, named, cfg, keep_json=False)
    stale = {"source": "auto", "parameters": "{}", "effect": -1.0, "control": 0.1}  # an earlier run's group
    write_annotation(store, row["slug"], "supernode", "auto: earlier run", ["3_0_8", "3_1_8"], False, stale)
    write_annotation(store, row["slug"], "supernode", "by hand", ["3_0_8", "8_0_8"], False)
    validated = auto_supernodes(
        store, lm, named, cfg, row["slug"], validation=ValidationSettings(draws=6, max_groups=8)
    )
    last = len(ids) - 1
    expected = [{f"{layer}_{index}_{last}" for index in range(3)} for layer in (3, 8)]
    passed = [set(v.group.node_ids) for v in validated if v.passed]
    assert sorted(passed, key=sorted) == sorted(expected, key=sorted), [
        (v.name, v.effect, v.control, v.interchangeability) for v in validated
    ]
    from query.graph_view import annotations

    shown = annotations(store, row["slug"], "supernode")  # the earlier run's group retired, the hand-made kept
    assert sorted(set(g["node_ids"]) for g in shown if g.get("source") == "auto") == sorted(expected, key=sorted)
    assert [g["name"] for g in shown if g.get("source") != "auto"] == ["by hand"]
    saved = read_table(store, "graph_annotations").filter((pl.col("source") == "auto") & ~pl.col("deleted"))
    assert (saved["effect"] < -saved["control"]).all()  # zeroing a group lowers the target beyond random groups


def test_set_supernodes_are_the_planted_mechanism(deep_llama_dirs, tmp_path) -> None:
    """Over a prompt set the same two planted groups pass (effect interval above random groups' over the
    prompts), are stored in `circuit_supernodes` and drawn on each of the set's graphs."""
    from circuitdb.attribution.pipeline import NamedTranscoders
    from circuitdb.circuits.auto_supernodes import ValidationSettings
    from circuitdb.circuits.building import build_prompt_set
    from circuitdb.circuits.prompt_sets import SetPrompt, define_set
    from circuitdb.circuits.set_supernodes import set_supernodes
    from circuitdb.config import AttributionConfig
    from circuitdb.models import load_model
    from circuitdb.store import Store, read_table

    lm = load_model(str(deep_llama_dirs[12]), device="cpu")
    lm.model.double()
    with torch.no_grad():
        target = int(lm.model(torch.tensor([lm.encode(PROMPT)])).logits[0, -1].argmax())
    named = NamedTranscoders(_planted_transcoders(lm, target, SET_PROMPTS), "planted")
    store = Store(tmp_path / "store")
    cfg = AttributionConfig(node_threshold=0.95, edge_threshold=0.99)
    define_set(store, "lazy", [SetPrompt(prompt, f"id:{target}", []) for prompt in SET_PROMPTS])
    build_prompt_set(store, lm, named, cfg, "lazy")
    validated = set_supernodes(store, lm, named, cfg, "lazy", validation=ValidationSettings(draws=4, max_groups=8))
    expected = [{f"planted/{layer}/{index}" for index in range(3)} for layer in (3, 8)]
    passed = [set(v.group.node_ids) for v in validated if v.passed]
    assert sorted(passed, key=sorted) == sorted(expected, key=sorted), [
        (sorted(v.group.node_ids), v.effect, v.effect_ci95, v.control, v.control_ci95, v.interchangeability)
        for v in validated
    ]
    assert all(v.prompts == 3 and v.group.position == 0 for v in validated if v.passed)
    stored = read_table(store, "circuit_supernodes", partitions=["lazy"])
    assert sorted((set(ids) for ids in stored["feature_ids"].to_list()), key=sorted) == sorted(expected, key=sorted)
    assert (stored["effect"] + stored["effect_ci95"] < -(stored["control"] + stored["control_ci95"])).all()
    saved = read_table(store, "graph_annotations").filter(pl.col("source") == "auto")
    slugs = read_table(store, "prompt_sets", partitions=["lazy"])["slug"].to_list()
    assert saved.height == 6 and set(saved["slug"]) == set(slugs)  # both groups on each of the three graphs
    from query.graph_view import annotations

    shown = annotations(store, slugs[0], "supernode")  # what the graph page draws, validated over the set
    assert len(shown) == 2 and all(g["source"] == "auto" and g["validation"]["prompt_set"] == "lazy" for g in shown)
    for slug, node_ids in saved.select("slug", "node_ids").iter_rows():
        length = len(read_table(store, "graphs", ["tokens"], [slug])["tokens"][0])
        layers = {int(node_id.split("_")[0]) for node_id in node_ids}
        assert len(layers) == 1 and all(node_id.endswith(f"_{length - 1}") for node_id in node_ids)


def test_coactivation_over_the_corpus_exemplars(tmp_path) -> None:
    """Worked by hand: plt/1/0 and plt/1/1 record the same two tokens in proportion (cosine 1); plt/1/3's two
    windows overlap on one token (counted once): {(0,5): 3, (0,6): 1} against plt/1/0's {(0,4): 1, (0,5): 2} is
    6 / (√10 · √5); plt/1/2 fires elsewhere (0); plt/1/9 has no exemplars (0 with all)."""
    from circuitdb.circuits.auto_supernodes import exemplar_coactivation
    from circuitdb.store import Store, write_partition

    store = Store(tmp_path / "store")
    windows = [  # feature, block, peak position, peak offset, values
        ("plt/1/0", 0, 5, 1, [1.0, 2.0, 0.0]),
        ("plt/1/1", 0, 4, 0, [2.0, 4.0]),
        ("plt/1/2", 1, 3, 0, [5.0, 1.0]),
        ("plt/1/3", 0, 5, 0, [3.0, 1.0]),
        ("plt/1/3", 0, 6, 1, [3.0, 1.0]),
    ]
    rows = [
        {"feature_id": f, "kind": "top", "group": 0, "rank": r, "block": b, "position": p, "activation": max(v)}
        | {"peak_offset": o, "tokens": ["x"] * len(v), "values": v}
        for r, (f, b, p, o, v) in enumerate(windows)
    ]
    write_partition(store, "exemplars", "plt-layer-001", pl.DataFrame(rows))
    ids = ["plt/1/0", "plt/1/1", "plt/1/2", "plt/1/3", "plt/1/9", "plt/1/0"]  # the last: plt/1/0 at another position
    features = pl.DataFrame({"feature_id": ids, "layer": [1] * len(ids)})
    matrix = exemplar_coactivation(store, features)
    expected = np.zeros((6, 6))
    for i, j, value in [(0, 1, 1.0), (0, 3, 6 / np.sqrt(50)), (1, 3, 6 / np.sqrt(50)), (0, 5, 1.0), (1, 5, 1.0)]:
        expected[i, j] = expected[j, i] = value
    expected[3, 5] = expected[5, 3] = 6 / np.sqrt(50)
    for i in (0, 1, 2, 3, 5):
        expected[i, i] = 1.0
    np.testing.assert_allclose(matrix, expected, atol=1e-9)
    assert exemplar_coactivation(store, features.with_columns(layer=pl.lit(2))) is None  # no exemplars there
