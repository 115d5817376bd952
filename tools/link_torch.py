"""Hard-link torch, torchvision and their CUDA and Triton packages from one virtual environment into another.

Why: `make label` keeps MONAI Label in its own environment (.venv-label: numpy < 2, pytorch-ignite 0.4.11), but both
environments pin the same torch build, and torch's CUDA wheels with nvidia-* and triton are 5.3 GB. Linked files cost
no disk; pip then finds those distributions installed at the pinned versions and installs only the rest. CI ran out
of disk installing the second copy.

Only distributions whose version equals the target's pin are linked, nothing is overwritten, and a filesystem that
cannot hard-link (another device) leaves the target untouched, so pip installs everything as before. Files outside
site-packages (console scripts such as `torchrun`, whose first line names the source environment's python) and
compiled bytecode are not linked: the target compiles its own.

    python tools/link_torch.py --source .venv --target .venv-label --requirements requirements-label.txt
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import sys
from pathlib import Path

SHARED_ROOTS = ("torch", "torchvision")
SHARED_PREFIXES = ("nvidia-", "cuda-", "triton")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise FileNotFoundError(f"{venv}: expected one lib/python3*/site-packages, found {len(found)}")
    return found[0]


def pins(requirements: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, by canonical name."""
    out = {}
    for line in requirements.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            out[canonical(match.group(1))] = match.group(2)
    return out


def shared_distributions(source: Path, wanted: dict[str, str]) -> list[md.Distribution]:
    """torch and torchvision at the target's pinned versions, and the nvidia-*, cuda-* and triton packages that
    were installed with them (torch's CUDA requirements go through extras whose names differ from the packages')."""
    dists = {canonical(d.metadata["Name"]): d for d in md.distributions(path=[str(source)])}
    if any(root not in dists or wanted.get(root) != dists[root].version for root in SHARED_ROOTS):
        return []  # another torch than the target's pin: share nothing
    return [d for name, d in dists.items() if name in SHARED_ROOTS or name.startswith(SHARED_PREFIXES)]


def files_to_link(dists: list[md.Distribution]) -> list[Path]:
    """Every file under site-packages, each distribution's metadata last: pip sees a distribution installed only
    when its files are all there, so an interrupted run is completed by the next one."""
    files, metadata = [], []
    for dist in dists:
        for entry in dist.files or []:
            rel = Path(str(entry))
            if rel.parts[0] == ".." or "__pycache__" in rel.parts:
                continue
            (metadata if rel.parts[0].endswith(".dist-info") else files).append(rel)
    return files + metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="environment to link from (.venv)")
    parser.add_argument("--target", type=Path, required=True, help="environment to link into (.venv-label)")
    parser.add_argument("--requirements", type=Path, required=True, help="the target's requirements file")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"link_torch: {args.source} does not exist; pip installs torch into {args.target}")
        return 0
    source, target = site_packages(args.source), site_packages(args.target)
    installed = {canonical(d.metadata["Name"]) for d in md.distributions(path=[str(target)])}
    if "torch" in installed:
        print(f"link_torch: {args.target} already has torch")
        return 0
    dists = shared_distributions(source, pins(args.requirements))
    if not dists:
        print(f"link_torch: {args.source} has no torch/torchvision at {args.requirements}'s pins; nothing linked")
        return 0
    probe = target / ".link_torch_probe"
    try:
        probe.unlink(missing_ok=True)
        os.link(source / "torch" / "__init__.py", probe)
        probe.unlink()
    except OSError as err:
        print(f"link_torch: cannot hard-link from {source} to {target} ({err}); pip installs torch instead")
        return 0
    files = 0
    for rel in files_to_link(dists):
        src, dst = source / rel, target / rel
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
            files += 1
    size = shutil.disk_usage(target).free / 2**30
    names = ", ".join(sorted(f"{d.metadata['Name']}=={d.version}" for d in dists))
    print(
        f"link_torch: linked {files} files of {len(dists)} distributions into {target} ({size:.1f} GiB free): {names}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
