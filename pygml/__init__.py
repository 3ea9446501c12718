"""pygml: graph-based deep metric learning on PyTorch Geometric."""

import warnings

# torch_geometric scripts a few helpers with torch.jit at import; torch 2.14 warns about each of them.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
