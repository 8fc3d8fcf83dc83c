"""Data: files -> uint8 tensors on the training device -> normalised batches."""

from vae_runner.data.batches import Batch, StreamingBatches, TensorBatches, corrupt, make_batches, to_unit_float
from vae_runner.data.datasets import DatasetInfo, LoadedData, Split, binarize_split, load_dataset, select_classes, take

__all__ = [
    "Batch",
    "DatasetInfo",
    "LoadedData",
    "Split",
    "StreamingBatches",
    "TensorBatches",
    "binarize_split",
    "corrupt",
    "select_classes",
    "take",
    "load_dataset",
    "make_batches",
    "to_unit_float",
]
