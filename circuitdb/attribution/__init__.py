"""Circuit tracing: the replacement model of a prompt, its attribution graph, pruning, interventions."""

from circuitdb.attribution.attribute import attribute, check_prompt
from circuitdb.attribution.graph import Graph
from circuitdb.attribution.interventions import Intervention, InterventionResult, intervene
from circuitdb.attribution.pruning import Pruned, keep_top_features, prune
from circuitdb.attribution.replacement_model import Features, ReplacementModel, trace
from circuitdb.attribution.targets import Targets, TargetSpec
from circuitdb.attribution.transcoders import Transcoders, load_transcoders, stored_transcoders

__all__ = [
    "Features",
    "Graph",
    "Intervention",
    "InterventionResult",
    "Pruned",
    "TargetSpec",
    "Targets",
    "ReplacementModel",
    "Transcoders",
    "attribute",
    "check_prompt",
    "intervene",
    "keep_top_features",
    "load_transcoders",
    "prune",
    "stored_transcoders",
    "trace",
]
