"""Datasets (the embedded glyphs, small offline sets, the four benchmarks), transforms and the P×K sampler."""

from pygml.data.base import (ClassSubset, DatasetSplits, GrayImages, RetrievalDataset, build_datasets,
                             carve_validation)
from pygml.data.glyphs import GlyphFontsError, Glyphs
from pygml.data.small import Digits, FashionMNIST
from pygml.data.transforms import build_transforms
from pygml.data.benchmarks import (CUB200, Cars196, CorruptImageError, InShop, StanfordOnlineProducts,
                                   build_benchmark)
from pygml.data.sampler import PKSampler

__all__ = [
    "CUB200", "Cars196", "ClassSubset", "CorruptImageError", "DatasetSplits", "Digits", "FashionMNIST",
    "GlyphFontsError", "Glyphs", "GrayImages", "InShop", "PKSampler", "RetrievalDataset", "StanfordOnlineProducts",
    "build_benchmark", "build_datasets", "build_transforms", "carve_validation",
]
