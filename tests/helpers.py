"""Plumbing shared by tests across the repository (imported as ``tests.helpers``; the repository root is on
``sys.path`` through ``conftest.py``).

``HANG_GUARD`` is the one timeout for every subprocess a default-suite test starts. It only stops a hung child
(a deadlock would otherwise hold CI until its 90-minute limit); it is not a speed check, so it is set far above
what any run takes on a busy 2-core machine: a test must never fail because the machine was slow.
"""

from __future__ import annotations

HANG_GUARD = 1800  # seconds
