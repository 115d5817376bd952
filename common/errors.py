"""The cause of a failed run as the last line a user reads.

MONAI evaluates every ``$`` expression and ``_target_`` of a config inside its own ``try`` and re-raises any
error as ``RuntimeError: Failed to evaluate ConfigExpression ...`` (transforms add ``applying transform ...``,
DataLoader workers ``Caught ... in DataLoader worker process``): under ``python -m monai.bundle run`` the message
that names the file, the problem and the fix ends up 20-100 lines above the end of the output. ``install()``
(first in every config's ``initialize``) keeps Python's full traceback and prints the cause once more as the final
line: ``Error: BratsInputError: /data/case/x_t1c.nii.gz: file not found ...``. The cause is the outermost error
raised by our own code (a bundle's ``scripts``, ``common``, ``tools``) under MONAI's wrapper, not the library error
it was raised from: ``CheckpointError: <file>: weights do not fit ...; <fix>`` rather than torch's ``size mismatch
for class_layers.out.weight``. Without an error of ours in the chain it is the innermost error.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import TracebackType


class BundleRootError(RuntimeError):
    """A run would write its ``models/`` and ``eval/`` into a folder that is not a bundle."""


# top-level packages whose errors are written for users (file, problem, fix): the bundles' own code and ours
OWN_PACKAGES = ("scripts", "common", "tools")


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was raised from (``raise ... from`` or while handling another), outermost first."""
    found = [exc]
    while True:
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None or any(nxt is e for e in found):
            return found
        found.append(nxt)
        exc = nxt


def raised_in(exc: BaseException) -> str:
    """The module whose code raised ``exc`` (the last frame of its traceback), or '' when unknown."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def is_own(exc: BaseException) -> bool:
    """Raised by a bundle's ``scripts``, by ``common`` or by ``tools``."""
    return raised_in(exc).split(".")[0] in OWN_PACKAGES


def root_cause(exc: BaseException) -> BaseException:
    """The error a user should read: the outermost one raised by our own code below MONAI's config wrappers
    (``Failed to evaluate ConfigExpression``, raised in ``monai.bundle``), else the innermost of the chain."""
    errors = chain(exc)
    wrappers = [i for i, e in enumerate(errors) if raised_in(e).startswith("monai.bundle")]
    below = errors[wrappers[-1] + 1 :] if wrappers else errors
    return next((e for e in below if is_own(e)), errors[-1])


# an exception line of a formatted traceback whose class is one of ours: "scripts.io.CXRReadError: <message>"
OWN_ERROR_LINE = re.compile(rf"^(?:{'|'.join(OWN_PACKAGES)})(?:\.\w+)*\.(\w+): (.*)$", re.M)


def last_line(exc: BaseException) -> str | None:
    """The line to print after the traceback, or None when the traceback already ends with the cause.

    An error of ours is printed whole (its message names the file, the problem and the fix); a library's error by
    its last line. A DataLoader worker's error arrives as text (``Caught RuntimeError in DataLoader worker process
    0. Original Traceback ...``, ending with MONAI's ``applying transform``): the outermost error of ours in that
    traceback (the last one written) is printed by its first line."""
    cause = root_cause(exc)
    message = str(cause).strip()
    if is_own(cause):
        return None if cause is exc else f"Error: {type(cause).__name__}: {message}"
    worker = OWN_ERROR_LINE.findall(message) if "in DataLoader worker process" in message else []
    if worker:
        return "Error: {}: {}".format(*worker[-1]).rstrip()
    if cause is exc:
        return None
    return f"Error: {type(cause).__name__}: {message.splitlines()[-1] if message else ''}".rstrip()


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
