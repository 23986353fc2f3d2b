"""Third-party messages every run printed that tell the user nothing, silenced narrowly:
each filter names one message of one library, so every other warning still shows."""

from __future__ import annotations

import logging
import warnings

LIGHTNING_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
"""Where Lightning's `rank_zero_info` messages are logged (its advertisements among them)."""


def _not_an_advert(record: logging.LogRecord) -> bool:
    """False for Lightning's tip to install its cloud logger (`litlogger`)."""
    return "litlogger" not in record.getMessage()


def _not_watcher_progress(record: logging.LogRecord) -> bool:
    """False for TensorBoard's line at every event file it reads (`report`'s curves)."""
    return not record.getMessage().startswith("Directory watcher advancing from")


def silence_known_noise() -> None:
    """Drop the messages a run used to print that the user can do nothing about
    (idempotent): Lightning's `litlogger` tip at every Trainer, PyTorch's deprecation of
    `LeafSpec` that Lightning's own `_pytree` helper triggers at every step, the model
    summary's warning that it sizes a mixed-precision model at 32 bits (which it is), its
    note that `SegModule.transfer_batch_to_device` is the one used (there is no other), its
    advice under DDP to sync the val/test scores (torchmetrics has summed them), and
    TensorBoard's `Directory watcher advancing from ...` at every event file read."""
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # under mixed precision the weights are float32, so the summary's 32-bit size is right
    warnings.filterwarnings(
        "ignore",
        message=r"Precision (bf)?16-mixed is not supported by the model summary",
        category=UserWarning,
        module=r"lightning\.pytorch\.utilities\.model_summary",
    )
    # val/ and test/ scores are torchmetrics values, already summed across processes
    warnings.filterwarnings(
        "ignore",
        message=r"It is recommended to use `self\.log\('(val|test)/",
        module=r"lightning\.pytorch\.trainer\.connectors\.logger_connector\.result",
    )
    # volumes: SegModule keeps whole evaluation volumes on the CPU (only windows go to the
    # device); the data module defines no hook of its own, so Lightning's choice is ours
    warnings.filterwarnings(
        "ignore",
        message=r"You have overridden `transfer_batch_to_device` in `LightningModule`",
    )
    filters = [(name, _not_an_advert) for name in LIGHTNING_RANK_ZERO_LOGGERS]
    for name, drop in [*filters, ("tensorboard", _not_watcher_progress)]:
        logger = logging.getLogger(name)
        if drop not in logger.filters:
            logger.addFilter(drop)
