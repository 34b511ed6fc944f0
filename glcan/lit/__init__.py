"""LightningModules: how glcan's networks are trained under Lightning."""

from glcan.lit.module import GLCanModule

__all__ = ["GLCanModule"]
