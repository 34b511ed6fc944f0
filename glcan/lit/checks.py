"""Checks that turn misuse into one clear line instead of a deep traceback."""

from __future__ import annotations

from typing import Any

import lightning as L


class ConfigError(ValueError):
    """A setting that cannot work; the message names it."""


def describe(module: L.LightningModule) -> dict[str, Any]:
    """What must match between a checkpoint and the model it is loaded into."""
    h = module.hparams
    return {
        "method": h.method,
        "arch": module.arch,
        "num_blocks": module.net.num_blocks,
        "boundaries": list(module.net.boundaries),
        "aux": h.aux if h.method == "local" else None,
        "num_classes": h.num_classes,
    }


def check_checkpoint_matches(module: L.LightningModule, checkpoint: dict) -> None:
    """Refuse a checkpoint written for another network before its state dict is loaded."""
    saved = checkpoint.get("glcan")
    if saved is None:
        return  # not written by glcan: Lightning's own state-dict check applies
    ours = describe(module)
    diffs = [f"{key}={saved.get(key)!r} (config has {ours[key]!r})" for key in ours if saved.get(key) != ours[key]]
    if diffs:
        raise ConfigError("the checkpoint does not match the model config: it has " + ", ".join(diffs))


def refuse_unsupported_precision(module: L.LightningModule) -> None:
    """16-mixed uses one GradScaler for all optimizers; with K block optimizers it would clip and
    step still-scaled gradients. bf16-mixed needs no scaler."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or module.hparams.method != "local":
        return
    if str(trainer.precision).startswith("16"):
        raise ConfigError(
            f"trainer.precision={trainer.precision} is not supported with model.method=local "
            "(one gradient scaler cannot serve K block optimizers); use bf16-mixed or 32-true"
        )
