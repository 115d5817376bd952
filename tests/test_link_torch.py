"""tools/link_torch.py: MONAI Label's environment shares torch's files with .venv instead of a second 5 GB copy."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from tools import link_torch


def fake_distribution(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """A distribution as pip leaves it: its files and a dist-info with METADATA and RECORD."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (site / info).mkdir(parents=True)
    (site / info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [*files, f"{info}/METADATA", f"{info}/RECORD"]
    (site / info / "RECORD").write_text("".join(f"{rel},,\n" for rel in record))


def make_venv(root: Path) -> Path:
    site = root / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    return site


def source_venv(tmp_path: Path, torch_version: str = "2.14.1") -> Path:
    site = make_venv(tmp_path / "src")
    fake_distribution(
        site,
        "torch",
        torch_version,
        {
            "torch/__init__.py": "torch",
            "torch/lib/libtorch.so": "binary",
            "torch/__pycache__/__init__.cpython-311.pyc": "bytecode naming the source venv",
            "../../../bin/torchrun": "#!/src/bin/python",
        },
    )
    fake_distribution(site, "torchvision", "0.29.1", {"torchvision/__init__.py": "tv"})
    fake_distribution(site, "nvidia-cublas", "13.1.1.3", {"nvidia/cublas/lib/libcublas.so": "cublas"})
    fake_distribution(site, "numpy", "2.4.6", {"numpy/__init__.py": "numpy 2"})
    return site


def run(tmp_path: Path, requirements: str) -> tuple[Path, Path]:
    req = tmp_path / "requirements-label.txt"
    req.write_text(requirements)
    make_venv(tmp_path / "dst")
    assert (
        link_torch.main(
            ["--source", str(tmp_path / "src"), "--target", str(tmp_path / "dst"), "--requirements", str(req)]
        )
        == 0
    )
    return link_torch.site_packages(tmp_path / "src"), link_torch.site_packages(tmp_path / "dst")


def installed(site: Path) -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in md.distributions(path=[str(site)])}


def test_torch_and_cuda_packages_are_hard_linked_and_seen_installed(tmp_path):
    source_venv(tmp_path)
    src, dst = run(tmp_path, "# MONAI Label\ntorch==2.14.1\ntorchvision==0.29.1\nnumpy==1.26.4\n")
    for rel in ("torch/lib/libtorch.so", "torchvision/__init__.py", "nvidia/cublas/lib/libcublas.so"):
        assert (dst / rel).stat().st_ino == (src / rel).stat().st_ino, rel
    # pip reads these as installed at the pinned versions and leaves them alone
    assert installed(dst) == {"torch": "2.14.1", "torchvision": "0.29.1", "nvidia-cublas": "13.1.1.3"}
    # numpy is pinned differently for MONAI Label; bytecode and scripts name the source environment
    assert not (dst / "numpy").exists()
    assert not (dst / "torch" / "__pycache__").exists()
    assert not (dst.parents[2] / "bin" / "torchrun").exists()


def test_another_torch_than_the_pin_links_nothing(tmp_path):
    source_venv(tmp_path, torch_version="2.13.0")
    _, dst = run(tmp_path, "torch==2.14.1\ntorchvision==0.29.1\n")
    assert list(dst.iterdir()) == []


def test_an_interrupted_link_is_completed_by_the_next_run(tmp_path):
    src = source_venv(tmp_path)
    dst = make_venv(tmp_path / "dst")
    (dst / "torch").mkdir()
    (dst / "torch" / "__init__.py").write_text("torch")  # a file linked before an interruption; no metadata yet
    _, dst = run(tmp_path, "torch==2.14.1\ntorchvision==0.29.1\n")
    assert (dst / "torch/lib/libtorch.so").stat().st_ino == (src / "torch/lib/libtorch.so").stat().st_ino
    assert installed(dst)["torch"] == "2.14.1"
