"""pygml: graph-based deep metric learning on PyTorch Geometric."""

__version__ = "0.1.0"
