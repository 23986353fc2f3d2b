"""The rules both planners share, images (`plan.py`) and volumes (`volume_plan.py`): the
`auto` word, the step counts of an epoch, what makes a class rare, how many classes a mask
holds at most, and the error a folder that cannot be planned raises."""

from __future__ import annotations

from typing import Any

AUTO = "auto"

MIN_STEPS = 20
"""Training steps an epoch has at least (`train_repeats` draws each image more often)."""

RARE_SHARE = 0.01
"""A foreground class under this share of all mask pixels is rare."""

RARE_STEPS_FACTOR = 2
"""With a rare class, an epoch has this many times `MIN_STEPS`: a rare class is learned late
(experiments/plan: a class of 0.3% of the pixels was learned after about 400 steps, and
only when the schedule still had a high learning rate then)."""


def rare_subject(rare: list[int], names: Any) -> str:
    """The rare classes as a log says them, by name where the data names them:
    "class tumour (2) is", "classes pedestrian (9) and bicyclist (10) are"."""
    if not rare:
        return ""
    names = [] if names is None or isinstance(names, str) else list(names)  # "auto": none
    plain = {"", "class{}", "class_{}"}  # the names the plans make up: the index says it
    said = [f"{names[i]} ({i})" if i < len(names) and names[i] not in
            {p.format(i) for p in plain} else str(i) for i in rare]  # fmt: skip
    listed = said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]
    return f"class {listed} is" if len(said) == 1 else f"classes {listed} are"


MAX_CLASSES = 32
"""More distinct mask values than this are not classes: instance labels (or noise)."""


class PlanError(ValueError):
    """The data cannot be planned for; the message lists every problem with its file."""
