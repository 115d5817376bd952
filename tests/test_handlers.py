"""The region handlers inside a MONAI SupervisedEvaluator built from a JSON-style config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from common.metrics import dice, hausdorff, iou

SPACING = (0.9, 1.1, 2.0)
REGIONS = ["TC", "WT", "ET"]


def make_cases(n: int = 5, seed: int = 0) -> list[dict]:
    """Channel-first binary masks; the 'image' is the prediction itself (identity network)."""
    rng = np.random.default_rng(seed)
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    cases = []
    for i in range(n):
        pred = np.zeros((3, 20, 18, 12), bool)
        ref = np.zeros_like(pred)
        for c in range(3):
            x, y, z = rng.integers(3, 12), rng.integers(3, 10), rng.integers(2, 7)
            pred[c, x : x + rng.integers(2, 7), y : y + rng.integers(2, 7), z : z + rng.integers(1, 4)] = True
            ref[c, x + 1 : x + rng.integers(3, 8), y : y + rng.integers(2, 8), z : z + rng.integers(1, 5)] = True
        if i == 1:
            ref[2] = False  # no enhancing tumour in the reference
        if i == 2:
            pred[2] = ref[2] = False  # nothing anywhere in region ET
        cases.append(
            {
                "image": MetaTensor(torch.as_tensor(pred, dtype=torch.float32), affine=affine),
                "label": MetaTensor(torch.as_tensor(ref, dtype=torch.float32), affine=affine),
            }
        )
    return cases


CONFIG = {
    "imports": ["$import torch", "$import monai"],
    "device": "$torch.device('cpu')",
    "region_names": REGIONS,
    "network": "$torch.nn.Identity()",
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": {"_target_": "Dataset", "data": "@cases"},
        "batch_size": 2,
    },
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "key_val_metric": {
            "val_dice": {
                "_target_": "common.handlers.RegionDice",
                "region_names": "@region_names",
                "empty_rule": "@empty_rule",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            }
        },
        "additional_metrics": {
            "val_iou": {
                "_target_": "common.handlers.RegionIoU",
                "region_names": "@region_names",
                "empty_rule": "@empty_rule",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            },
            "val_hd95": {
                "_target_": "common.handlers.RegionHausdorff",
                "region_names": "@region_names",
                "percentile": 95,
                "empty_rule": "@empty_rule",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            },
        },
    },
}


@pytest.mark.parametrize("rule", ["brats", "nan"])
def test_handlers_report_each_region(rule: str) -> None:
    cases = make_cases()
    parser = ConfigParser(dict(CONFIG, cases=cases, empty_rule=rule))
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    metrics = evaluator.state.metrics

    for name, fn in (
        ("val_dice", lambda p, r: dice(p, r, rule)),
        ("val_iou", lambda p, r: iou(p, r, rule)),
        ("val_hd95", lambda p, r: hausdorff(p, r, SPACING, 95, rule)),
    ):
        table = np.array([[fn(c["image"][k].numpy() > 0, c["label"][k].numpy() > 0) for k in range(3)] for c in cases])
        expected = np.nanmean(table, axis=0)
        for k, region in enumerate(REGIONS):
            assert metrics[f"{name}_{region}"] == pytest.approx(expected[k]), (name, region)
        assert metrics[name] == pytest.approx(np.mean(expected))
        details = evaluator.state.metric_details[name]
        assert details.shape == (len(cases), 3)
    # the empty-ET cases are where the two conventions differ
    if rule == "brats":
        assert evaluator.state.metric_details["val_hd95"][1, 2] == pytest.approx(373.13)
        assert evaluator.state.metric_details["val_dice"][2, 2] == 1.0
    else:
        assert torch.isnan(evaluator.state.metric_details["val_dice"][1, 2])
    assert evaluator.state.best_metric == pytest.approx(metrics["val_dice"])


def test_region_count_mismatch_is_reported() -> None:
    parser = ConfigParser(dict(CONFIG, cases=make_cases(2), empty_rule="brats", region_names=["TC", "WT"]))
    evaluator = parser.get_parsed_content("evaluator")
    with pytest.raises(ValueError, match="region_names"):
        evaluator.run()
