"""Features: statistics and exemplars of each latent (`statistics`), what its decoder row writes
(`readouts`), and which latents a text activates (`text_search`)."""

from circuitdb.features.statistics import FeatureStatsConfig, build_layer_features, feature_statistics
from circuitdb.features.text_search import active_features, feature_on_text, ranked_text_matches

__all__ = [
    "FeatureStatsConfig",
    "active_features",
    "build_layer_features",
    "feature_on_text",
    "feature_statistics",
    "ranked_text_matches",
]
