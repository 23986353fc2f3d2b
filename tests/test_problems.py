"""One format for every list of problems found before a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import compose_train
from unet_seg.data.checks import check_pairs
from unet_seg.problems import SHOWN, ProblemList, problem_list


def test_a_long_list_shows_its_first_problems_and_counts_the_rest() -> None:
    problems = [f"file{i}.png: unreadable" for i in range(SHOWN + 5)] + ["two\nlines"]
    text = problem_list("36 problems", problems)
    lines = text.splitlines()
    assert lines[0] == "36 problems:" and lines[1] == "  file0.png: unreadable"
    assert len(lines) == 1 + SHOWN + 1 and lines[-1] == "  ... and 6 more"
    assert problem_list("1 problem", ["two\nlines"]).splitlines()[1:] == ["  two", "    lines"]


def test_the_data_checks_keep_every_problem_beyond_those_shown(tmp_path: Path) -> None:
    """Preflight gathers the checks' problems with others: none is lost to the shown cap."""
    pairs = [(tmp_path / f"img{i}.png", tmp_path / f"mask{i}.png") for i in range(SHOWN + 3)]
    with pytest.raises(ProblemList) as caught:
        check_pairs(pairs, in_channels=1)
    assert len(caught.value.problems) == 2 * len(pairs)  # each image and each mask unreadable
    assert str(caught.value).endswith(f"... and {2 * len(pairs) - SHOWN} more")


def test_the_finetune_defaults_are_the_config_files() -> None:
    from unet_seg.config import to_plain
    from unet_seg.finetune import DEFAULTS

    assert DEFAULTS == to_plain(compose_train().finetune)
