"""The synthetic twin (``scripts.synthetic``) measured the way a radiologist or CT physicist would check a chest CT:
every value is computed from scans read back from the written .mhd/.raw with ITK and from the annotation CSVs, never
from the generator's internals.

Reference values and where they come from:
- HU scale and tissue CT numbers: air -1000 by definition of the Hounsfield scale; fat about -120..-80, muscle and
  unenhanced blood about +30..+55, aerated lung -900..-750 (about -850 in inspiration), cortical bone above +700,
  spongy bone +200..+400 (standard CT-number tables, e.g. W. A. Kalender, Computed Tomography, 3rd ed. 2011;
  Radiopaedia, "Hounsfield unit").
- The supine lung is denser at the back (the gravity-dependent attenuation gradient of normal lung; e.g. Webb,
  Mueller, Naidich, High-Resolution CT of the Lung).
- Pulmonary vessels branch from the hilum and taper to ~1-2 mm in the outer third of the lung (radiology's inner,
  middle and outer thirds of the lung); hilar (lobar) arteries ~10-15 mm in an adult (the twin's specification; the
  twin's chest is scaled to its small field of view, so its widest hilar vessels are smaller).
- Nodules: LUNA16 reference nodules are >= 3 mm, smaller findings are excluded (Setio et al., Medical Image
  Analysis 42, 2017); LIDC/LUNA16 nodules are solid, part-solid or ground-glass, isolated, juxta-pleural or
  juxta-vascular. Ground glass is hazy increased attenuation that does not hide the vessels (Fleischner glossary,
  Hansell et al., Radiology 246, 2008); the twin draws it at -650..-350 HU, solid nodules at 0..+90 HU. LIDC readers
  measured diameters in the axial plane; the measured size must match the annotation within 25% (or a slice
  thickness, the resolution along z, for the smallest).
- Low-dose chest CT noise: sigma ~20-40 HU in uniform soft tissue (the twin's specification).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from scripts.synthetic import generate

SIZE = (96, 96, 48)  # the demo's scans (configs/demo_spec.json)
N_SCANS = 8
SEED = 2
COLUMNS = ("coordX", "coordY", "coordZ", "diameter_mm")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = generate(
        tmp_path_factory.mktemp("twin"), n_scans=N_SCANS, size=SIZE, n_subsets=2, empty_fraction=0.0, seed=SEED
    )
    return read_root(root)


def read_root(root: Path) -> list[dict]:
    import itk

    def findings(name: str) -> dict[str, list[list[float]]]:
        out: dict[str, list[list[float]]] = {}
        with open(root / name, newline="") as f:
            for row in csv.DictReader(f):
                out.setdefault(row["seriesuid"], []).append([float(row[k]) for k in COLUMNS])
        return out

    nodules, excluded = findings("annotations.csv"), findings("annotations_excluded.csv")
    out = []
    for mhd in sorted(root.glob("subset*/*.mhd")):
        image = itk.imread(str(mhd))
        scan = {
            "uid": mhd.stem,
            "hu": itk.array_from_image(image).astype(np.float32),  # [z, y, x]
            "spacing": np.array(image.GetSpacing(), float),  # x, y, z
            "origin": np.array(image.GetOrigin(), float),
            "direction": np.array(image.GetDirection(), float),
            "nodules": nodules.get(mhd.stem, []),
            "excluded": excluded.get(mhd.stem, []),
        }
        scan.update(anatomy(scan))
        out.append(scan)
    return out


def to_index(scan: dict, world) -> np.ndarray:
    """Continuous index (x, y, z) of a world LPS point: p = origin + D @ (spacing * index)."""
    return np.linalg.solve(scan["direction"], np.asarray(world, float) - scan["origin"]) / scan["spacing"]


def anatomy(scan: dict) -> dict:
    """Masks found in the image alone: outside air, body, lung fields (parenchyma with what lies in it), the two lungs,
    a vessel mask inside the lungs; also the lateral position of every lung voxel (0 medial, 1 at the ribs)."""
    hu = scan["hu"]
    smooth = ndimage.gaussian_filter(hu, 0.7)
    low = smooth < -500
    labels, _ = ndimage.label(low)
    border = np.unique(np.concatenate([labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()]))
    outside = np.isin(labels, border[border > 0])
    body = ~outside
    field = np.zeros_like(low)
    for k in range(hu.shape[0]):  # each axial slice: the air spaces inside the body with their holes filled
        field[k] = ndimage.binary_fill_holes(low[k] & body[k])
    nz, ny, nx = hu.shape
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    mid = 0.5 * (xs.min() + xs.max())  # the body's midline
    xi = np.arange(nx)[None, None, :]
    lungs, lateral = [], np.full(hu.shape, np.nan, np.float32)
    for side in (xi < mid, xi > mid):
        mask = field & side
        lab, n = ndimage.label(mask)
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = lab == 1 + int(np.argmax(sizes))
        # lateral position along each row: 0 at the mediastinal edge of the lung, 1 at its costal edge
        has = mask.any(axis=2)
        first = np.argmax(mask, axis=2).astype(np.float32)
        last = (nx - 1 - np.argmax(mask[:, :, ::-1], axis=2)).astype(np.float32)
        medial, costal = (last, first) if side[0, 0, 0] else (first, last)
        with np.errstate(divide="ignore", invalid="ignore"):  # one-voxel rows
            q = (xi - medial[..., None]) / np.where(has, costal - medial, 1.0)[..., None]
        lateral = np.where(mask, np.clip(q, 0.0, 1.0), lateral)
        lungs.append(mask)
    # chest wall: the body outside the convex hull of the lungs in each slice (the hull holds the mediastinum)
    from skimage.morphology import convex_hull_image

    both = lungs[0] | lungs[1]
    hull = np.stack([convex_hull_image(sl) if sl.any() else sl for sl in both])
    lab, n = ndimage.label(~outside)
    body = lab == 1 + int(np.argmax(ndimage.sum(~outside, lab, range(1, n + 1))))  # not the table
    wall = body & ~hull
    wall_distance = ndimage.distance_transform_edt(~wall, sampling=scan["spacing"][::-1])
    findings = np.zeros(hu.shape, bool)
    for x, y, z, d in scan["nodules"] + scan["excluded"]:
        findings |= ball(scan, (x, y, z), max(d, 3.0) / 2 + 3.0)
    # vessels: above -600 HU inside the lung, away from its partial-volume rim
    inner = [ndimage.binary_erosion(lung, structure=np.ones((1, 3, 3)), iterations=2) for lung in lungs]
    vessels = [lung & (smooth > -600) & ~findings for lung in inner]
    return {
        "smooth": smooth,
        "outside": outside,
        "field": field,
        "lungs": lungs,
        "lateral": lateral,
        "vessels": vessels,
        "findings": findings,
        "wall": wall,
        "wall_distance": wall_distance,
    }


def ball(scan: dict, world, radius: float) -> np.ndarray:
    """Voxels within ``radius`` mm of a world point."""
    nz, ny, nx = scan["hu"].shape
    k = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1)  # x, y, z
    p = (k * scan["spacing"]) @ scan["direction"].T + scan["origin"]
    inside = np.linalg.norm(p - np.asarray(world), axis=-1) <= radius
    return np.transpose(inside, (2, 1, 0))


def sample(scan: dict, volume: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Trilinear values of a [z, y, x] volume at world points [..., 3]."""
    idx = np.linalg.solve(scan["direction"], (world - scan["origin"]).reshape(-1, 3).T).T / scan["spacing"]
    v = ndimage.map_coordinates(volume, idx[:, ::-1].T, order=1, mode="nearest")
    return v.reshape(world.shape[:-1])


def measure_nodule(scan: dict, x: float, y: float, z: float, d: float) -> dict:
    """Density at the annotated voxel, and the nodule's size measured from the annotated centre: 100 rays, each ending
    where the image (smoothed in-plane only) falls below half-way between the nodule's density and the lung around
    it; the diameter is twice the median ray (a vessel or the chest wall touching the nodule lengthens a few rays,
    not the median; rays still in dense tissue at twice the radius, in the wall or along a vessel, are left out)."""
    centre = np.array([x, y, z])
    r = d / 2
    i, j, k = np.round(to_index(scan, centre)).astype(int)
    image = scan.setdefault("smooth_axial", ndimage.gaussian_filter(scan["hu"], (0, 0.7, 0.7)))
    n = np.arange(100) + 0.5  # 100 directions spread evenly over the sphere (Fibonacci lattice)
    polar, azimuth = np.arccos(1 - 2 * n / 100), np.pi * (1 + 5**0.5) * n
    dirs = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1)
    around = sample(scan, image, centre + (r + np.linspace(2.0, 4.0, 5))[:, None, None] * dirs)
    background = float(np.median(around[around < -600])) if (around < -600).any() else -850.0
    if d >= 8:  # resolved: the outer component's density (the ground glass around a part-solid core)
        plateau = float(np.median(sample(scan, image, centre + np.linspace(0.55, 0.8, 4)[:, None, None] * r * dirs)))
    else:  # blur flattens a small nodule's profile: half of its peak
        plateau = float(sample(scan, image, centre[None])[0])
    threshold = 0.5 * (plateau + background)

    t = np.arange(0.2 * r, 2.0 * r + 2.0, 0.1)
    below = sample(scan, image, centre + t[:, None, None] * dirs) < threshold  # [t, direction]
    ends = t[np.argmax(below, axis=0)][below.any(axis=0)]  # rays that never leave ran into the wall or a vessel
    assert len(ends) >= 30, (scan["uid"], x, y, z, d, len(ends))

    return {
        "hu": float(scan["hu"][k, j, i]),
        "diameter": 2.0 * float(np.median(ends)),
        "plateau": plateau,
        "background": background,
        "wall_gap": float(scan["wall_distance"][k, j, i]) - r,  # <= ~1 mm: juxta-pleural, touching the chest wall
        "d": d,
    }


def nodule_kind(m: dict) -> str:
    """Solid: soft tissue at the centre (and around it when resolved); part-solid: a solid core in ground glass;
    ground glass: -750..-300 HU. Below 5 mm partial volume decides the centre's HU: not classified."""
    if m["d"] < 5:
        return "small"
    if m["hu"] > -300:
        return "part-solid" if m["d"] >= 8 and m["plateau"] <= -300 else "solid"
    return "ground-glass" if m["hu"] >= -750 else "unknown"


# --- tests -----------------------------------------------------------------------------------------------------


def test_air_outside_the_body_is_minus_1000(scans):
    for s in scans:
        air = s["hu"][s["outside"]]
        assert abs(float(np.median(air)) + 1000) <= 15, (s["uid"], float(np.median(air)))


def test_lung_parenchyma_density_and_dependent_gradient(scans):
    for s in scans:
        lungs = s["lungs"][0] | s["lungs"][1]
        median = float(np.median(s["hu"][lungs]))  # the whole lung field, vessels included
        assert -900 <= median <= -750, (s["uid"], median)
        # supine: the back third of the lungs denser than the front third
        ys = np.nonzero(lungs.any(axis=(0, 2)))[0]
        third = (ys.max() - ys.min()) / 3
        yy = np.arange(lungs.shape[1])[None, :, None]
        # parenchyma: inside the lungs' partial-volume rim, away from vessels
        parenchyma = ndimage.binary_erosion(lungs, np.ones((1, 3, 3)), iterations=2) & (s["smooth"] < -700)
        front = np.median(s["hu"][parenchyma & (yy < ys.min() + third)])
        back = np.median(s["hu"][parenchyma & (yy > ys.max() - third)])
        assert back - front >= 15, (s["uid"], front, back)


def fat_and_soft_tissue(s: dict, where: np.ndarray) -> dict[str, float]:
    """Share of the voxels of ``where`` that are fat (-150..-50 HU after a slight smoothing) and soft tissue or blood
    (0..+80 HU), and the median raw HU of each class."""
    v, raw = s["smooth"][where], s["hu"][where]
    fat, soft = (v > -150) & (v < -50), (v >= 0) & (v <= 80)
    return {
        "fat": float(fat.mean()),
        "soft": float(soft.mean()),
        "fat_hu": float(np.median(raw[fat])),
        "soft_hu": float(np.median(raw[soft])),
    }


def test_chest_wall_fat_and_muscle(scans):
    """The chest wall (the body outside the lungs' hull): subcutaneous fat about -100 HU and muscle about +40 HU,
    each a real share of it."""
    for s in scans:
        m = fat_and_soft_tissue(s, s["wall"])
        assert m["fat"] > 0.1 and -130 <= m["fat_hu"] <= -70, (s["uid"], m)
        assert m["soft"] > 0.1 and 20 <= m["soft_hu"] <= 60, (s["uid"], m)


def test_mediastinum_heart_and_fat(scans):
    """Between the lungs: a heart-sized blood pool at 0..+80 HU (heart, great vessels) in mediastinal fat."""
    for s in scans:
        right, left = s["lungs"]  # the patient's right lung is on the image's left (LPS: x grows to the left)
        xi = np.arange(s["hu"].shape[2])[None, None, :]
        edge_r = np.where(right.any(2), s["hu"].shape[2] - 1 - np.argmax(right[:, :, ::-1], 2), -1)[..., None]
        edge_l = np.where(left.any(2), np.argmax(left, 2), -1)[..., None]
        between = (xi > edge_r) & (xi < edge_l) & (edge_r >= 0) & (edge_l >= 0) & ~s["field"]
        tissue = between & (s["smooth"] > -30) & (s["smooth"] < 150)
        lab, n = ndimage.label(tissue)
        biggest = lab == 1 + int(np.argmax(ndimage.sum(tissue, lab, range(1, n + 1))))
        volume = biggest.sum() * np.prod(s["spacing"]) / 1000.0
        assert volume > 5.0, (s["uid"], volume)  # cm^3: a heart-sized blood pool in the slab
        blood = float(np.median(s["hu"][ndimage.binary_erosion(biggest)]))
        assert 0 <= blood <= 80, (s["uid"], blood)
        m = fat_and_soft_tissue(s, between)
        assert m["fat"] > 0.08 and -130 <= m["fat_hu"] <= -70, (s["uid"], m)


def test_bone_cortex_and_marrow(scans):
    for s in scans:
        bone = s["smooth"] > 150
        lab, n = ndimage.label(bone)
        vertebra = lab == 1 + int(np.argmax(ndimage.sum(bone, lab, range(1, n + 1))))
        values = s["hu"][vertebra]
        assert np.percentile(values, 99) > 700, (s["uid"], np.percentile(values, 99))  # cortex
        assert 150 <= np.median(values) <= 600, (s["uid"], np.median(values))  # mostly marrow


def test_low_dose_noise(scans):
    """Standard deviation inside uniform soft tissue (heart, great vessels, muscle: all +40..+45 HU)."""
    for s in scans:
        soft = ndimage.binary_erosion((s["smooth"] > 0) & (s["smooth"] < 80), iterations=2)
        sigma = float(np.std(s["hu"][soft]))
        assert 20 <= sigma <= 40, (s["uid"], sigma)


def vessel_tree(s: dict) -> list[dict]:
    """Per lung: the share of the vessel mask in its largest and its four largest connected pieces (gaps of a voxel
    bridged, as partial volume breaks the thinnest vessels, and through the nodules, which are left out of the mask),
    how far the largest piece reaches from the mediastinal side to the costal side (0..1), the widest vessel, and
    vessel diameters on the centrelines in the inner and outer thirds: mean, and weighted by cross-section (blood
    volume, what dominates the picture)."""
    from skimage.morphology import skeletonize

    out = []
    for vessels in s["vessels"]:
        bridged = ndimage.binary_dilation(vessels) | s["findings"]  # a vessel may run through a nodule
        lab, n = ndimage.label(bridged, structure=np.ones((3, 3, 3)))
        lab = np.where(vessels, lab, 0)
        sizes = ndimage.sum(vessels, lab, range(1, n + 1))
        tree = lab == 1 + int(np.argmax(sizes))
        radius = ndimage.distance_transform_edt(vessels, sampling=s["spacing"][::-1])
        centre = skeletonize(vessels) > 0
        r, q = radius[centre], s["lateral"][centre]
        inner, outer = r[q < 1 / 3], r[q > 2 / 3]
        assert len(inner) and len(outer), (s["uid"], "no vessels in the inner or the outer third")
        out.append(
            {
                "share": float(sizes.max() / vessels.sum()),
                "share4": float(np.sort(sizes)[-4:].sum() / vessels.sum()),
                "reach": (float(np.nanmin(s["lateral"][tree])), float(np.nanmax(s["lateral"][tree]))),
                "widest_mm": float(2 * radius.max()),
                "inner_mm": float(2 * inner.mean()),
                "outer_mm": float(2 * outer.mean()),
                "inner_weighted_mm": float(2 * np.average(inner, weights=inner**2)),
                "outer_weighted_mm": float(2 * np.average(outer, weights=outer**2)),
            }
        )
    return out


def test_vessel_tree_branches_from_hilum_to_periphery_and_tapers(scans):
    lungs = [lung for s in scans for lung in vessel_tree(s)]
    for lung in lungs:
        # a few trees (artery and vein, parted where they leave the lung at the hilum), not scattered tubes
        assert lung["share"] > 0.3 and lung["share4"] > 0.8, lung
        assert lung["reach"][0] < 0.25 and lung["reach"][1] > 2 / 3, lung  # from the hilum into the outer third
        # hilar vessels: 10-15 mm in an adult; here the chest is scaled to a 70-90 mm field of view
        assert lung["widest_mm"] >= 4.0, lung
    inner = np.mean([lung["inner_weighted_mm"] for lung in lungs])
    outer = np.mean([lung["outer_weighted_mm"] for lung in lungs])
    assert inner > 1.25 * outer, (inner, outer)  # tapers from the hilum to the periphery
    assert sum(lung["inner_weighted_mm"] > lung["outer_weighted_mm"] for lung in lungs) >= 0.75 * len(lungs), lungs
    assert np.mean([lung["outer_mm"] for lung in lungs]) < 2.5, lungs  # ~1-2 mm vessels in the outer third


def nodule_like_vessel_sections(s: dict) -> int:
    """Round vessel cross-sections of nodule size (3-10 mm) in an axial slice that are tubes in 3-D: the vessel goes
    on through at least twice its diameter of slices (a nodule of that size would end within its diameter)."""
    sp = s["spacing"]
    found = 0
    for vessels in s["vessels"]:
        for k in range(0, vessels.shape[0], 3):
            lab, n = ndimage.label(vessels[k])
            for m, box in enumerate(ndimage.find_objects(lab), start=1):
                blob = lab[box] == m
                area = blob.sum() * sp[0] * sp[1]
                diameter = 2 * np.sqrt(area / np.pi)
                extent = ((box[0].stop - box[0].start) * sp[1], (box[1].stop - box[1].start) * sp[0])
                if not (3.0 <= diameter <= 10.0 and max(extent) <= 1.3 * min(extent)):
                    continue
                half = int(np.ceil(diameter / sp[2]))  # +- one diameter of slices
                if k - half < 0 or k + half >= vessels.shape[0]:
                    continue
                foot = ndimage.binary_dilation(blob, iterations=max(1, int(diameter / 2 / sp[0])))
                column = vessels[k - half : k + half + 1][:, box[0], box[1]] & foot
                if column.any(axis=(1, 2)).all():
                    found += 1
    return found


def test_vessels_look_like_nodules_in_one_slice(scans):
    counts = [nodule_like_vessel_sections(s) for s in scans]
    assert all(c >= 1 for c in counts), counts


def test_annotated_nodules_are_where_and_as_large_as_drawn(scans):
    for s in scans:
        for x, y, z, d in s["nodules"]:
            assert 3.0 <= d <= 30.0  # LUNA16 reference nodules (Setio et al. 2017)
            m = measure_nodule(s, x, y, z, d)
            assert m["hu"] >= -750 and m["hu"] - m["background"] >= 120, m  # nodule density at the annotated voxel
            tolerance = max(0.25 * d, s["spacing"][2])  # 25%, or a slice (resolution along z) for the smallest
            assert abs(m["diameter"] - d) <= tolerance, m
        for *_, d in s["excluded"]:
            assert d == -1 or 0 < d < 3.0  # excluded findings: below the reference size (or "unknown", -1)


def test_nodule_kinds_occur(scans):
    kinds, pleural = [], 0
    for s in scans:
        for x, y, z, d in s["nodules"]:
            m = measure_nodule(s, x, y, z, d)
            kinds.append(nodule_kind(m))
            pleural += m["wall_gap"] <= 0  # juxta-pleural: the nodule reaches the chest wall
    assert "solid" in kinds and ({"ground-glass", "part-solid"} & set(kinds)), kinds  # ground glass, pure or not
    classified = [k for k in kinds if k != "small"]
    assert kinds.count("solid") > len(classified) / 2, kinds  # solid nodules are the majority in LIDC/LUNA16
    assert pleural >= 1, pleural
