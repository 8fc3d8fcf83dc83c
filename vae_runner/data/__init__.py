"""Data: files -> uint8 tensors on the training device -> normalised batches."""

from vae_runner.data.batches import Batch, StreamingBatches, TensorBatches, make_batches, to_unit_float
from vae_runner.data.datasets import DatasetInfo, LoadedData, Split, load_dataset

__all__ = [
    "Batch",
    "DatasetInfo",
    "LoadedData",
    "Split",
    "StreamingBatches",
    "TensorBatches",
    "load_dataset",
    "make_batches",
    "to_unit_float",
]
