"""Writing files so that readers only ever see the old content or the new, never a part."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it into place.

    The temporary name is unique, so processes writing the same file at once (DDP
    ranks saving the same split) never trip over each other's temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600): give it the permissions of a file opened
        # for writing, as the user's umask says (usually 0644), so others can read the run
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(data: dict[str, Any], path: str | Path, sort_keys: bool = True) -> Path:
    """Write `data` as indented JSON atomically (see `atomic_write_text`); NaN is written as
    `NaN`, as `json.dumps` does. `sort_keys=False` keeps the dict's order."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def json_safe(results: dict[str, Any]) -> dict[str, Any]:
    """NaN (a score left out everywhere) -> null, which JSON can hold."""
    return {k: None if _is_nan(v) else v for k, v in results.items()}


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Rows of scores (per image or per volume) as CSV, atomically (an empty cell: the score
    is left out, NaN)."""
    fields = list(rows[0]) if rows else ["image"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if _is_nan(v) else v for k, v in row.items()})
    return atomic_write_text(path, text.getvalue())


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def put_in_place(tmp: Path, root: Path, current: Callable[[], bool], what: str) -> None:
    """Rename the finished folder `tmp` to `root`, replacing what is there. Parallel callers
    (DDP ranks, sweep jobs) may be doing the same: a folder already there for which
    `current()` holds wins (`tmp` is removed), and a rename that loses a race is retried,
    so whoever finishes leaves one complete folder. `what` names it in the log and errors."""
    for _ in range(5):
        if current():
            log.info("%s at %s was written concurrently; keeping it", what, root)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old: Path | None = None
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            old.rmdir()
            try:
                root.rename(old)
            except FileNotFoundError:  # moved away concurrently
                old = None
        try:
            tmp.rename(root)
        except OSError:
            continue  # another caller put a folder in place meanwhile: look again
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return
    raise OSError(f"could not put the {what} in place at {root}")
