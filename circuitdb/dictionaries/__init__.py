"""Sparse dictionaries: modules (SAE, per-layer transcoder), activations, data streaming, training."""

from circuitdb.config import DictionaryConfig, TrainConfig
from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.dictionaries.train import TrainResult, train_dictionary

__all__ = ["ActivationSource", "DictionaryConfig", "SparseCoder", "TrainConfig", "TrainResult", "train_dictionary"]
