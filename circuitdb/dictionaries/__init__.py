"""Sparse dictionaries: modules (SAE, per-layer transcoder), activations, data streaming, training."""

from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.sparse_coder import DictionaryConfig, SparseCoder
from circuitdb.dictionaries.train import TrainConfig, TrainResult, train_dictionary

__all__ = ["ActivationSource", "DictionaryConfig", "SparseCoder", "TrainConfig", "TrainResult", "train_dictionary"]
