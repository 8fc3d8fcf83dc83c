"""Data: files -> train / validation / test uint8 tensors on the training device -> normalised batches."""

from vae_runner.data.batches import Batch, StreamingBatches, TensorBatches, corrupt, make_batches, to_unit_float
from vae_runner.data.datasets import DatasetInfo, LoadedData, load_dataset
from vae_runner.data.memory import available_memory
from vae_runner.data.splits import SPLIT_SEED, Split, binarize_split, select_classes, stratified_indices, stratified_subset

__all__ = [
    "SPLIT_SEED",
    "Batch",
    "DatasetInfo",
    "LoadedData",
    "Split",
    "StreamingBatches",
    "TensorBatches",
    "available_memory",
    "binarize_split",
    "corrupt",
    "load_dataset",
    "make_batches",
    "select_classes",
    "stratified_indices",
    "stratified_subset",
    "to_unit_float",
]
