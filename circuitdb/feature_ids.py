"""Feature ids, '<dictionary>/<layer>/<index>': the key that joins features, exemplars, vectors and
graph nodes. Kept free of heavy imports, so that CLI queries start without loading torch."""

from __future__ import annotations

from circuitdb.errors import CircuitDBError


def parse_feature_id(feature_id: str) -> tuple[str, int, int]:
    """'<dictionary>/<layer>/<index>' → (dictionary, layer, index), or one clear error."""
    parts = feature_id.split("/")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise CircuitDBError(
            f"malformed feature id {feature_id!r}; expected <dictionary>/<layer>/<index>, e.g. plt/12/345"
        )
    return parts[0], int(parts[1]), int(parts[2])
