"""Files written whole or not at all (a temporary name in the target folder, then a rename over the target), and
files recognised by their content.

Datalists, metrics and results are read by later steps and by people; an interrupted run must leave either the
previous file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (``mkstemp`` always makes 0600, which
    would hide every output from the other users of a shared server)."""
    mask = os.umask(0o022)  # the only portable way to read the umask is to set it and set it back
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it is synced and renamed over ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is untouched.
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that take a file name (nibabel, ITK, matplotlib).

    The temporary name ends with ``path``'s own name, so writers that pick the format from the suffix
    (``.nii.gz``, ``.mhd``, ``.png``) still do; on success it is renamed over ``path``, on failure removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp", suffix=f"_{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` all or nothing."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` all or nothing."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike, indent: int = 1) -> Path:
    """``json.dump`` that never leaves a half-written file."""
    return atomic_write_text(json.dumps(obj, indent=indent), path)


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """True for a DICOM Part 10 file: the magic ``DICM`` after the 128-byte preamble, whatever the file is called
    (files exported from a PACS often have no suffix). False when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False
