"""Datalist preparation on the generated NIH layout: official test list, patient-disjoint validation, label order,
view filter, and bad rows (missing files, unknown labels) failing or skipped on request."""

from __future__ import annotations

import csv
import json

import pytest

from scripts.labels import LABELS, pos_weight
from scripts.prepare import DatasetLayoutError, prepare_datalist, read_entries
from scripts.synthetic import HEADER, generate


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cxr14"), n_patients=30, size=64, seed=3, n_dicom=3)


def test_layout_matches_nih(layout):
    lines = (layout / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == HEADER
    assert all(len(row) == 11 for row in csv.reader(lines[1:]))
    assert sorted(p.parent.parent.name for p in layout.glob("images_*/images/*.png"))[0] == "images_001"
    assert len({p.parent.parent.name for p in layout.glob("images_*/images/*.png")}) == 2
    name = next(layout.glob("images_*/images/*.png")).name
    assert len(name) == len("00000001_000.png") and name[8] == "_"


def test_split_is_official_and_patient_disjoint(layout, tmp_path):
    out = tmp_path / "datalist.json"
    dl = prepare_datalist(layout, out, val_fraction=0.2, seed=1)
    assert json.loads(out.read_text())["labels"] == list(LABELS) == dl["labels"]
    test_names = set((layout / "test_list.txt").read_text().split())
    assert {p["image"].rsplit("/", 1)[1] for p in dl["test"]} == test_names
    patients = {k: {p["patient"] for p in dl[k]} for k in ("training", "validation", "test")}
    assert not patients["training"] & patients["validation"]
    assert not patients["training"] & patients["test"] and not patients["validation"] & patients["test"]
    # labels: multi-hot in the fixed order, read from the CSV by column name
    entries = {row["Image Index"]: row["Finding Labels"] for row in read_entries(layout / "Data_Entry_2017.csv")}
    for item in dl["training"][:20]:
        findings = entries[item["image"].rsplit("/", 1)[1]]
        expected = [int(n in findings.split("|")) for n in LABELS]
        assert item["label"] == expected
    # seeded: same seed same split, other seed other split
    again = prepare_datalist(layout, None, val_fraction=0.2, seed=1)
    assert [p["image"] for p in again["validation"]] == [p["image"] for p in dl["validation"]]
    other = prepare_datalist(layout, None, val_fraction=0.2, seed=2)
    assert {p["patient"] for p in other["validation"]} != patients["validation"]


def test_view_filter_and_reordered_columns(layout, tmp_path):
    # same data with columns in another order (as in the v2020 revision): parsing is by name
    root = tmp_path / "v2020"
    root.mkdir()
    for f in ("train_val_list.txt", "test_list.txt"):
        (root / f).write_text((layout / f).read_text())
    (root / "images").symlink_to(layout / "images_001")
    (root / "images_002").symlink_to(layout / "images_002")
    with open(layout / "Data_Entry_2017.csv") as f:
        rows = list(csv.reader(f))
    order = [3, 0, 6, 1, 2, 4, 5, 7, 8, 9, 10]
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        csv.writer(f).writerows([[r[i] for i in order] for r in rows])
    dl = prepare_datalist(root, None, seed=0, view="PA")
    assert all(p["view"] == "PA" for k in ("training", "validation", "test") for p in dl[k])
    full = prepare_datalist(layout, None, seed=0, view="PA")
    assert sorted(p["label"] for p in dl["test"]) == sorted(p["label"] for p in full["test"])


def _copy_layout(layout, tmp_path, edit):
    root = tmp_path / "copy"
    root.mkdir()
    for f in ("train_val_list.txt", "test_list.txt"):
        (root / f).write_text((layout / f).read_text())
    for d in ("images_001", "images_002"):
        (root / d).symlink_to(layout / d)
    lines = (layout / "Data_Entry_2017.csv").read_text().splitlines()
    (root / "Data_Entry_2017.csv").write_text("\n".join(edit(lines)) + "\n")
    return root


def test_missing_file_and_unknown_label(layout, tmp_path):
    name = (layout / "test_list.txt").read_text().split()[0]

    def edit(lines):
        bad = lines[1].split(",")
        bad[1] = "Pneumonitis"
        missing = lines[2].replace(lines[2].split(",")[0], name.replace(".png", "_x.png"))
        return [*lines, ",".join(bad).replace(bad[0], name), missing]

    root = _copy_layout(layout, tmp_path, edit)
    (root / "test_list.txt").write_text((root / "test_list.txt").read_text() + name.replace(".png", "_x.png") + "\n")
    with pytest.raises(DatasetLayoutError) as err:
        prepare_datalist(root, None)
    message = str(err.value)
    assert "Pneumonitis" in message and name.replace(".png", "_x.png") in message and "not found" in message
    with pytest.warns(UserWarning, match="Pneumonitis"):
        dl = prepare_datalist(root, None, skip_bad=True)
    assert name.replace(".png", "_x.png") not in json.dumps(dl)


def test_missing_lists_and_columns(layout, tmp_path):
    root = _copy_layout(layout, tmp_path, lambda lines: [lines[0].replace("Patient ID", "PID"), *lines[1:]])
    with pytest.raises(DatasetLayoutError, match="Patient ID"):
        prepare_datalist(root, None)
    (root / "Data_Entry_2017.csv").write_text((layout / "Data_Entry_2017.csv").read_text())
    (root / "test_list.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="test_list.txt"):
        prepare_datalist(root, None)


def test_class_weights_are_negatives_over_positives_capped():
    """BCE pos_weight per label: 4 images; Atelectasis in 1 (3/1 = 3), Cardiomegaly in 3 (1/3 -> floor 1),
    Hernia in none (4/max(0, 1) = 4), and a cap of 3.5 applied to the first two labels' 3 and 4."""
    vectors = [[0] * len(LABELS) for _ in range(4)]
    vectors[0][0] = 1
    for v in vectors[:3]:
        v[1] = 1
    items = [{"label": v} for v in vectors]
    weights = pos_weight(items, max_weight=20.0)
    assert weights[0].item() == 3.0 and weights[1].item() == 1.0 and weights[LABELS.index("Hernia")].item() == 4.0
    capped = pos_weight(items, max_weight=3.5)
    assert capped[0].item() == 3.0 and capped[LABELS.index("Hernia")].item() == 3.5
