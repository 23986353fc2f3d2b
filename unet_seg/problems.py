"""Problems found before a run, listed together: the one format of every such list."""

from __future__ import annotations

from collections.abc import Sequence

SHOWN = 30
"""Problems a list shows; the rest are counted (`... and N more`)."""


def problem_list(heading: str, problems: Sequence[object], shown: int = SHOWN) -> str:
    """`heading:` then one indented line per problem (its own further lines indented more),
    the first `shown` of them, then `... and N more`."""
    lines = "\n  ".join(str(p).replace("\n", "\n    ") for p in problems[:shown])
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{heading}:\n  {lines}{more}"


class ProblemList(ValueError):
    """A `ValueError` listing several problems (`problem_list`); `problems` holds every one,
    those beyond the shown ones included, for a caller that gathers them with others."""

    def __init__(self, heading: str, problems: Sequence[object]) -> None:
        self.problems = [str(p) for p in problems]
        super().__init__(problem_list(heading, self.problems))
