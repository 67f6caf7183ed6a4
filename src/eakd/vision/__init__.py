"""Image classification: the model zoo (`eakd.vision.models`), data sets (`eakd.vision.datasets`, found by
name in ``DATASETS``) and their transforms (`eakd.vision.transforms`, configured by a ``Recipe``)."""

from eakd.vision.datasets import DATASETS
from eakd.vision.transforms import Recipe

__all__ = ["DATASETS", "Recipe"]
