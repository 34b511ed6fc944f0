"""glcan: supervised local learning with global-local auxiliary heads.

The stable Python API (see docs/guide.md):

- ``GLCanModule``: the LightningModule for ``method`` = e2e | e2e_recompute | local, from a
  registry name or your own units;
- ``GLCanDataModule``: mnist5k (embedded), cifar10/100, svhn, stl10, folder, fake;
- ``memory_report`` / ``predict_memory``: training memory without allocating it;
- ``build_backbone``, ``Backbone``, ``build_head``, ``ContextBlock``: the building blocks.
"""

from glcan.data import GLCanDataModule
from glcan.heads import ContextBlock, build_head, list_heads
from glcan.lit import GLCanModule
from glcan.memory import MemoryTracker
from glcan.memory import predict as predict_memory
from glcan.lit.plan import memory_report
from glcan.backbones import Backbone, build_backbone, list_backbones

__version__ = "0.1.0"
__all__ = [
    "Backbone", "ContextBlock", "GLCanDataModule", "GLCanModule", "MemoryTracker", "build_backbone", "build_head",
    "list_backbones", "list_heads", "memory_report", "predict_memory",
]
