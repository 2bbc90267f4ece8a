"""Datasets (CIFAR-10/100, ImageFolder trees, procedurally generated shapes) as uint8 tensors."""

from mlprunes.data.datasets import (
    DATASETS,
    DataSplits,
    DatasetError,
    ImageSet,
    load_data,
)
from mlprunes.data.shapes import SHAPE_CLASSES

__all__ = ["DATASETS", "DataSplits", "DatasetError", "ImageSet", "load_data", "SHAPE_CLASSES"]
