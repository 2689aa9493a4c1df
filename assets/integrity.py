"""Asset checks that every file an asset wrote still matches the checksum recorded when it was written
(the same verification as `circuitdb check`, restricted to the asset's files)."""

from __future__ import annotations

import dagster as dg

from assets.resources import ProjectParam
from circuitdb.store.integrity import check_files, rebuild_target

ASSET_FILES = {
    "corpus_tokens": ("tables/corpora", "tables/corpus_blocks"),
    "activations": ("activations", "tables/activation_shards"),
    "dictionaries": ("dictionaries", "tables/dictionaries"),
    "feature_stats": ("tables/features", "tables/exemplars"),
    "attribution_graphs": ("graphs", "tables/graphs", "tables/graph_nodes", "tables/graph_edges"),
}
"""Store folders (relative to its root) that each asset writes."""


def files_intact_check(asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="files_intact",
        description=f"Every file under {', '.join(ASSET_FILES[asset])} matches the checksum recorded when it was "
        "written (`circuitdb check` for the whole store).",
    )
    def files_intact(project: ProjectParam) -> dg.AssetCheckResult:
        store = project.store
        report = check_files(store.root, ASSET_FILES[asset])
        listed = "\n".join(
            f"- {p.path.relative_to(store.root)}: {p.problem} → {rebuild_target(store.root, p.path)}"
            for p in report.problems
        )
        damaged = [p for p in report.problems if not p.problem.startswith("no checksum")]
        return dg.AssetCheckResult(
            passed=not damaged,
            metadata={"files": report.n_files, "problems": dg.MetadataValue.md(listed or "none")},
        )

    return files_intact


def files_intact_checks() -> list[dg.AssetChecksDefinition]:
    return [files_intact_check(asset) for asset in ASSET_FILES]
