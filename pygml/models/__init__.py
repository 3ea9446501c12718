"""Backbones (images → pooled features), embedding heads and the loader of local weight files.

Every backbone takes RGB images in [0, 1], shape (B, 3, H, W), normalises them the way its weights
expect, and returns (B, ``out_dim``) features. ``ViTSmall16`` (``pygml.models.vit``) and ``TimmBackbone``
(any timm model by name) need the optional timm extra.
"""

from pygml.models.backbones import (IMAGENET_MEAN, IMAGENET_STD, POOLINGS, Backbone, GlobalPool, MobileNetV2,
                                    ResNet50, SmallCNN)
from pygml.models.bninception import BNInception
from pygml.models.heads import EmbeddingHead, l2n
from pygml.models.timm import TimmBackbone
from pygml.models.weights import WeightsMismatchError, fit_state_dict, load_weights, read_weights

__all__ = ["BNInception", "Backbone", "EmbeddingHead", "GlobalPool", "IMAGENET_MEAN", "IMAGENET_STD",
           "MobileNetV2", "POOLINGS", "ResNet50", "SmallCNN", "TimmBackbone", "WeightsMismatchError", "fit_state_dict", "l2n",
           "load_weights", "read_weights"]
