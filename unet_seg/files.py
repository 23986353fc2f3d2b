"""Writing files so that readers only ever see the old content or the new, never a part."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
