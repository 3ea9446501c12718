"""pygml: graph-based deep metric learning on PyTorch Geometric.

The library (``pygml.graph``, ``pygml.nn``, ``pygml.losses``, ``pygml.models``, ``pygml.methods``,
``pygml.data``, ``pygml.evaluation``) takes explicit arguments; ``pygml.app`` reads run configs and
drives training (``docs/architecture.md``).
"""

import logging
import warnings

logging.getLogger("pygml").addHandler(logging.NullHandler())

# PyG scripts a few helpers with torch.jit when it is first imported, which torch 2.14 deprecates with a
# warning per helper; silenced for that import only (the process's warning filters are left as they were)
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    import torch_geometric  # noqa: F401

__version__ = "0.1.0"
