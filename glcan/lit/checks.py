"""Checks that turn misuse into one clear line instead of a deep traceback."""

from __future__ import annotations

from typing import Any

import lightning as L


class ConfigError(ValueError):
    """A setting that cannot work; the message names it."""


def checkpoint_identity(module: Any) -> dict[str, Any]:
    """What must match between a checkpoint and the model it is loaded into."""
    h = module.hparams
    return {
        "method": h.method,
        "backbone": module.backbone_name,
        "num_blocks": module.net.num_blocks,
        "boundaries": list(module.net.boundaries),
        "head": h.head if module.is_local else None,
        "last_head": h.get("last_head", "classifier") if module.is_local else None,
        "num_classes": h.num_classes,
        "optimizer": module.optimizer_name,
    }


def check_checkpoint_matches(module: Any, checkpoint: dict) -> None:
    """Refuse a checkpoint written for another network (or optimizer) before its state is loaded."""
    saved = checkpoint.get("glcan")
    if saved is None:
        return  # not written by glcan: Lightning's own state-dict check applies
    ours = checkpoint_identity(module)
    diffs = [f"{key}={saved.get(key)!r} (config has {ours[key]!r})" for key in ours
             if key in saved and saved.get(key) != ours[key]]
    if diffs:
        raise ConfigError("the checkpoint does not match the model config: it has " + ", ".join(diffs))


def check_schedule_length(saved: list[Any], planned: Any, unit: str) -> None:
    """Refuse to resume a fixed-length schedule (one-cycle, cosine) into a run of another length.

    Such a schedule is a curve over the planned length: stretched mid-run it would jump. The
    message says what to do instead.
    """
    for length in saved:  # the saved schedules' lengths (glcan.lit.optim.schedule_length)
        if length and planned and int(length) != int(planned):
            raise ConfigError(
                f"the checkpoint's learning-rate schedule spans {length} {unit} but this run plans {planned}: "
                "a one-cycle or cosine schedule cannot be stretched mid-run; resume with the trainer settings the "
                "run started with (trainer.max_epochs / max_steps / limit_train_batches), or start a new run")


def refuse_unsupported_precision(module: L.LightningModule) -> None:
    """``16-mixed`` scales the loss with one GradScaler, which serves one optimizer: with K block
    optimizers it would unscale and step K times per update. E2E (one block) may use it, but not
    with clipping: under manual optimization the gradients are clipped before the scaler unscales
    them. ``bf16-mixed`` and ``16-true`` need no scaler and work everywhere."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or str(trainer.precision) not in ("16-mixed", "16"):
        return
    if module.net.num_blocks > 1:
        raise ConfigError(
            f"trainer.precision={trainer.precision} is not supported with {module.net.num_blocks} blocks (one gradient "
            "scaler cannot serve K block optimizers); use bf16-mixed, 16-true or 32-true")
    if module.hparams.gradient_clip_val:
        raise ConfigError(f"trainer.precision={trainer.precision} cannot clip gradients (model.gradient_clip_val): they "
                          "are still scaled when clipped; use bf16-mixed or 32-true, or no clipping")

