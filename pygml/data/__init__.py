"""Datasets (the embedded glyphs, small offline sets, the four benchmarks, the user's own folders and
manifests), transforms and the P×K sampler.

Every dataset takes explicit arguments (a root, a split, a transform); ``pygml.app`` builds them from a
run's config.
"""

from pygml.data.base import (ClassSubset, DatasetSplits, GrayImages, RetrievalDataset, carve_validation,
                             hold_out_classes)
from pygml.data.benchmarks import BENCHMARKS, CUB200, Cars196, InShop, StanfordOnlineProducts, benchmark_splits
from pygml.data.files import csv_splits, folder_splits, list_image_tree, read_manifest
from pygml.data.glyphs import GlyphFontsError, Glyphs
from pygml.data.images import CorruptImageError, ImageFiles, decode_image, find_unreadable
from pygml.data.sampler import PKSampler
from pygml.data.small import FASHION_MNIST_ROOT, Digits, FashionMNIST
from pygml.data.transforms import build_transforms

__all__ = [
    "BENCHMARKS", "CUB200", "Cars196", "ClassSubset", "CorruptImageError", "DatasetSplits", "Digits",
    "FASHION_MNIST_ROOT", "FashionMNIST", "GlyphFontsError", "Glyphs", "GrayImages", "ImageFiles", "InShop",
    "PKSampler", "RetrievalDataset", "StanfordOnlineProducts", "benchmark_splits", "build_transforms",
    "carve_validation", "csv_splits", "decode_image", "find_unreadable", "folder_splits", "hold_out_classes",
    "list_image_tree", "read_manifest",
]
