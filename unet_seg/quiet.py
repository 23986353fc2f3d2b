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


def silence_known_noise() -> None:
    """Drop the messages a run used to print that the user can do nothing about
    (idempotent): Lightning's `litlogger` tip at every Trainer, and PyTorch's deprecation of
    `LeafSpec` that Lightning's own `_pytree` helper triggers at every step."""
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _not_an_advert not in logger.filters:
            logger.addFilter(_not_an_advert)
