"""Each mutation-testing group's tests pass where ``make mutate`` runs them: a staging directory outside the
repository holding only the group's sources and tests (tools/mutation.py). A test that reaches for a file the
group does not stage (a bundle's ``configs/``, a helper of another bundle) passes in ``make test`` and fails
mutmut's first, unmutated run; this catches it in the default suite instead of at the end of CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD
from tools.mutation import GROUPS, clean_env, stage


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_group_passes_unmutated_in_its_staging_directory(name: str, tmp_path: Path) -> None:
    group = GROUPS[name]
    dest = stage(name, group, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", *group.tests],
        cwd=dest,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, f"{name} staged in {dest}:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
