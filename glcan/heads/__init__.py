"""Auxiliary heads: what each block of a locally trained network is trained through.

Importing this package registers the built-in heads -- ``glcan`` (the default, a
global-local head on GCNet's context block), ``linear``, ``dgl`` and ``infopro``, and the
super-resolution heads ``sr_glcan`` and ``sr_conv``, the detection heads ``det_glcan`` and
``det_conv``, and the token forms of ``glcan`` and
``linear`` for Vision Transformers -- so `build_head` and `list_heads` see
them without any further import.
"""

from glcan.heads.base import AuxHead, ModuleHead
from glcan.heads.context_block import ContextBlock
from glcan.heads.registry import build_head, head_options, list_heads, register_head

# Imported for their side effect: each module registers its heads.
from glcan.heads import baselines as _baselines  # noqa: E402,F401  isort: skip
from glcan.heads import glcan as _glcan  # noqa: E402,F401  isort: skip
from glcan.heads import sr as _sr  # noqa: E402,F401  isort: skip
from glcan.heads import tokens as _tokens  # noqa: E402,F401  isort: skip
from glcan.heads import dense as _dense  # noqa: E402,F401  isort: skip
from glcan.heads.baselines import DGLHead, InfoProHead, LinearHead  # noqa: E402  isort: skip
from glcan.heads.glcan import GLCanHead  # noqa: E402  isort: skip

__all__ = [
    "AuxHead", "ModuleHead", "ContextBlock", "build_head", "list_heads", "register_head", "head_options",
    "GLCanHead", "LinearHead", "DGLHead", "InfoProHead",
]
