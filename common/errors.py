"""The cause of a failed run as the last line a user reads.

MONAI evaluates every ``$`` expression and ``_target_`` of a config inside its own ``try`` and re-raises any
error as ``RuntimeError: Failed to evaluate ConfigExpression ...`` (transforms add ``applying transform ...``,
DataLoader workers ``Caught ... in DataLoader worker process``): under ``python -m monai.bundle run`` the message
that names the file, the problem and the fix ends up 20-100 lines above the end of the output. ``install()``
(first in every config's ``initialize``) keeps Python's full traceback and prints the innermost error once more
as the final line: ``Error: BratsInputError: /data/case/x_t1c.nii.gz: file not found ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType


class BundleRootError(RuntimeError):
    """A run would write its ``models/`` and ``eval/`` into a folder that is not a bundle."""


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (``raise ... from`` or an error raised while handling another)."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def last_line(exc: BaseException) -> str | None:
    """The line to print after the traceback, or None when the traceback already ends with the cause."""
    cause = root_cause(exc)
    if cause is exc:
        return None
    message = str(cause).strip().splitlines()
    return f"Error: {type(cause).__name__}: {message[-1] if message else ''}".rstrip()


def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """Python's own report, then the cause as the last line."""
    sys.__excepthook__(exc_type, exc, tb)
    line = last_line(exc)
    if line:
        print(f"\n{line}", file=sys.stderr, flush=True)


def install() -> bool:
    """Use :func:`excepthook` for uncaught errors of this process (idempotent; returns True, so it can sit in a
    config's ``initialize`` list)."""
    sys.excepthook = excepthook
    return True


def check_bundle_root(bundle_root: str) -> bool:
    """Refuse a default ``bundle_root`` (``.``, the working directory) that is not a bundle directory.

    The configs follow the model zoo: ``bundle_root`` is ``.`` and a run writes ``models/`` and ``eval/`` there, so
    a command started from the repository root (or any other folder) would scatter outputs where nobody ignores
    them. An explicit ``--bundle_root`` elsewhere (the demo's ``work_dirs/demo/<bundle>``, MONAI Label's app copy)
    is always accepted. Returns True, for a config's ``initialize`` list."""
    root = Path(bundle_root).resolve()
    if root == Path.cwd().resolve() and not (root / "configs" / "metadata.json").is_file():
        raise BundleRootError(
            f"{root}: not a bundle directory (no configs/metadata.json), and bundle_root '.' would write models/ "
            "and eval/ here: run the command from the bundle directory (cd bundles/<name>), or pass "
            "--bundle_root <folder for this run's outputs>"
        )
    return True
