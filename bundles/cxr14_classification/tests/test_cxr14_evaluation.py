"""CXR14 evaluation numbers (REFERENCE.md section 2): per-label AUROC and its mean, sensitivity/specificity at the
Youden threshold chosen on VALIDATION. Each function is checked on hand-built arrays (expected values worked out in
the comments) and against brute force: the ROC by sweeping every threshold, the AUROC as the Mann-Whitney pair count
(ties one half), Youden's J by trying every threshold."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from scripts.evaluation import (
    PredictionCollector,
    auroc,
    batch_paths,
    compute_report,
    plot_roc,
    roc_curve,
    sens_spec,
    write_report,
    youden_threshold,
)
from scripts.metrics import LabelwiseAUROC

# ---------------------------------------------------------------- brute force


def brute_roc(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """One point per distinct score t (predict positive when score >= t), highest t first, after (0, 0) at inf."""
    pos, neg = max(int(labels.sum()), 1), max(int((1 - labels).sum()), 1)
    fpr, tpr, thr = [0.0], [0.0], [math.inf]
    for t in sorted(set(scores.tolist()), reverse=True):
        tpr.append(sum(1 for s, y in zip(scores, labels) if y and s >= t) / pos)
        fpr.append(sum(1 for s, y in zip(scores, labels) if not y and s >= t) / neg)
        thr.append(t)
    return fpr, tpr, thr


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def brute_youden(scores: np.ndarray, labels: np.ndarray) -> float:
    """The highest score threshold among those with the largest sensitivity + specificity - 1."""
    best, best_j = math.nan, -math.inf
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        j = (pred & (labels == 1)).sum() / (labels == 1).sum() - (pred & (labels == 0)).sum() / (labels == 0).sum()
        if j > best_j:
            best, best_j = t, j
    return best


def random_label(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to 0.05 (ties within and across classes), positives scored higher on average."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.float32)
    scores = np.round((rng.random(n) + 0.4 * labels) / 1.4 / 0.05) * 0.05
    return scores.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(6))
def test_roc_auroc_and_youden_match_brute_force(seed: int) -> None:
    scores, labels = random_label(seed)
    fpr, tpr, thr = roc_curve(scores, labels)
    expected = brute_roc(scores, labels)
    assert fpr.tolist() == pytest.approx(expected[0])
    assert tpr.tolist() == pytest.approx(expected[1])
    assert thr.tolist() == pytest.approx(expected[2])
    assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))
    assert youden_threshold(scores, labels) == pytest.approx(brute_youden(scores, labels))


def test_roc_curve_by_hand_with_a_tie_across_classes() -> None:
    # scores 0.9 (pos) 0.5 (pos) 0.5 (neg) 0.2 (neg): the two 0.5 enter together
    fpr, tpr, thr = roc_curve(np.array([0.5, 0.9, 0.2, 0.5]), np.array([0, 1, 0, 1]))
    assert thr.tolist() == [math.inf, 0.9, 0.5, 0.2]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    # AUROC: pairs (0.9 > 0.5, 0.9 > 0.2, 0.5 = 0.5 -> 1/2, 0.5 > 0.2) = 3.5 / 4
    assert auroc(np.array([0.5, 0.9, 0.2, 0.5]), np.array([0, 1, 0, 1])) == 0.875


def test_roc_curve_with_one_positive_and_one_negative() -> None:
    # one positive (0.4): TPR jumps from 0 to 1 at 0.4; two negatives: FPR 1/2 at 0.9, 1 at 0.2
    fpr, tpr, _ = roc_curve(np.array([0.9, 0.4, 0.2]), np.array([0, 1, 0]))
    assert tpr.tolist() == [0.0, 0.0, 1.0, 1.0] and fpr.tolist() == [0.0, 0.5, 0.5, 1.0]
    fpr, tpr, _ = roc_curve(np.array([0.9, 0.4, 0.2]), np.array([1, 0, 1]))  # one negative
    assert fpr.tolist() == [0.0, 0.0, 1.0, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0]


def test_one_class_labels() -> None:
    scores = np.array([0.3, 0.7, 0.1])
    fpr, tpr, _ = roc_curve(scores, np.zeros(3))  # no positive: the sensitivity axis stays at 0
    assert tpr.tolist() == [0.0, 0.0, 0.0, 0.0] and fpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    fpr, tpr, _ = roc_curve(scores, np.ones(3))
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.0] and tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert math.isnan(auroc(scores, np.zeros(3))) and math.isnan(auroc(scores, np.ones(3)))
    assert youden_threshold(scores, np.zeros(3)) == 0.5 and youden_threshold(scores, np.ones(3)) == 0.5


def test_youden_by_hand() -> None:
    # positives 0.9 0.8 0.3, negatives 0.6 0.2 0.1 0.05; J at each threshold: 0.9: 1/3 - 0; 0.8: 2/3 - 0;
    # 0.6: 2/3 - 1/4; 0.3: 1 - 1/4 = 0.75 (the maximum); 0.2: 1 - 2/4; 0.1: 1 - 3/4; 0.05: 0
    scores = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.05])
    assert youden_threshold(scores, np.array([1, 1, 1, 0, 0, 0, 0])) == pytest.approx(0.3)
    # every positive above every negative: the lowest positive score separates them (J = 1)
    assert youden_threshold(np.array([0.9, 0.7, 0.4, 0.2]), np.array([1, 1, 0, 0])) == pytest.approx(0.7)


def test_sens_spec_threshold_is_inclusive_and_nan_without_a_class() -> None:
    scores, labels = np.array([0.5, 0.4, 0.6, 0.2]), np.array([1, 0, 0, 0])
    assert sens_spec(scores, labels, 0.5) == pytest.approx((1.0, 2 / 3))  # 0.5 >= 0.5 is positive
    assert sens_spec(scores, labels, 0.55) == pytest.approx((0.0, 2 / 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN by rule, not by a 0/0 division warning in the user's log
        sens, spec = sens_spec(scores, np.zeros(4), 0.45)
        assert math.isnan(sens) and spec == 0.5
        sens, spec = sens_spec(scores, np.ones(4), 0.45)
        assert sens == 0.5 and math.isnan(spec)


# ---------------------------------------------------------------- the report

LABELS = ["A", "B", "C"]
# validation, 6 images.
# A: positives 0.9 0.8 0.2, negatives 0.3 0.6 0.1 -> J: 0.9 1/3, 0.8 2/3, 0.6 1/3, 0.3 0, 0.2 1/3 -> threshold 0.8;
#    val AUROC A = (3 + 3 + 1) / 9 = 7 / 9
# B: one class -> threshold 0.5, val AUROC NaN
# C: positives 0.7 0.4 0.9, negatives 0.4 0.6 0.1 -> J: 0.9 1/3, 0.7 2/3, 0.6 1/3, 0.4 1/3 -> threshold 0.7;
#    val AUROC C = (3 + 3 + 0.5 + 1) / 9 = 7.5 / 9
VAL = (
    np.array([[0.9, 0.1, 0.7], [0.8, 0.2, 0.4], [0.3, 0.3, 0.9], [0.6, 0.4, 0.4], [0.2, 0.5, 0.6], [0.1, 0.6, 0.1]]),
    np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]]),
)
# test, 4 images. A at 0.8: predicted [1 0 1 0] vs [1 1 0 0] -> sens 1/2, spec 1/2; AUROC (0 + 1 + 0 + 1) / 4 = 0.5
#   (the test set's own Youden threshold would be 0.7 with sensitivity 1: the report must not use it)
# B at 0.5: [1 0 1 0] vs [1 0 0 0] -> sens 1, spec 2/3; AUROC: 0.5 vs 0.4, 0.6, 0.2 -> 2/3
# C at 0.7: no positive -> AUROC and sensitivity NaN; [1 0 1 0] -> spec 2/4
TEST = (
    np.array([[0.85, 0.5, 0.8], [0.7, 0.4, 0.65], [0.95, 0.6, 0.75], [0.5, 0.2, 0.1]]),
    np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]),
)
EXPECTED_ROWS = [
    ("A", 0.5, 7 / 9, 0.8, 0.5, 0.5, 2, 2),
    ("B", 2 / 3, math.nan, 0.5, 1.0, 2 / 3, 1, 3),
    ("C", math.nan, 7.5 / 9, 0.7, math.nan, 0.5, 0, 4),
]
KEYS = ("label", "auroc", "val_auroc", "threshold", "sensitivity", "specificity", "n_positive", "n_negative")


def same(a, b) -> bool:
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return a == pytest.approx(b)


def test_report_by_hand() -> None:
    report = compute_report(VAL, TEST, LABELS)
    for row, expected in zip(report["labels"], EXPECTED_ROWS, strict=True):
        assert list(row) == list(KEYS)
        assert all(same(row[k], v) for k, v in zip(KEYS, expected)), (row, expected)
        assert isinstance(row["n_positive"], int) and isinstance(row["n_negative"], int)
    # means over the labels where the value exists
    assert report["summary"] == {
        "auroc": pytest.approx((0.5 + 2 / 3) / 2),
        "val_auroc": pytest.approx((7 / 9 + 7.5 / 9) / 2),
        "sensitivity": pytest.approx(0.75),
        "specificity": pytest.approx((0.5 + 2 / 3 + 0.5) / 3),
        "n_test_images": 4,
        "n_val_images": 6,
        "threshold_rule": "youden_on_val",
    }


def test_report_mean_of_nothing_is_nan() -> None:
    one_class = (np.array([[0.2], [0.6]]), np.array([[0], [0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "mean of empty slice"
        summary = compute_report(one_class, one_class, ["X"])["summary"]
    assert math.isnan(summary["auroc"]) and math.isnan(summary["val_auroc"]) and math.isnan(summary["sensitivity"])
    assert summary["specificity"] == 0.5  # threshold 0.5 (one class in validation): 0.6 is a false positive
    assert summary["n_test_images"] == 2


def collectors() -> tuple[PredictionCollector, PredictionCollector]:
    val, test = PredictionCollector(), PredictionCollector()
    val.preds, val.labels, val.paths = list(VAL[0]), list(VAL[1]), [f"v{i}.png" for i in range(6)]
    test.preds, test.labels, test.paths = list(TEST[0]), list(TEST[1]), [f"t{i}.png" for i in range(4)]
    return val, test


def test_write_report_files_and_printout(tmp_path, capsys) -> None:
    val, test = collectors()
    report = write_report(val, test, LABELS, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text(), parse_constant=float)["summary"]["n_val_images"] == 6
    rows = list(csv.reader(io.StringIO((tmp_path / "metrics.csv").read_text())))
    assert rows[0] == list(KEYS)
    assert [r[0] for r in rows[1:]] == LABELS
    assert rows[1][3:] == ["0.8", "0.5", "0.5", "2", "2"]
    assert rows[3][1] == "nan"
    preds = list(csv.reader(io.StringIO((tmp_path / "test_predictions.csv").read_text())))
    assert preds[0] == ["image", "p_A", "p_B", "p_C", "y_A", "y_B", "y_C"]
    assert preds[1] == ["t0.png", "0.85", "0.5", "0.8", "1", "1", "0"]
    assert len(preds) == 5
    assert b"\r" not in (tmp_path / "metrics.csv").read_bytes() + (tmp_path / "test_predictions.csv").read_bytes()
    assert (tmp_path / "roc_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.splitlines() == [
        "A                    AUROC 0.500  sens 0.500  spec 0.500",
        "B                    AUROC 0.667  sens 1.000  spec 0.667",
        "C                    AUROC nan  sens nan  spec 0.500",
        "mean                 AUROC 0.583  (test images: 4)",
    ]
    assert report["labels"][0]["threshold"] == pytest.approx(0.8)


def test_write_report_with_a_single_label(tmp_path) -> None:
    val, test = collectors()
    val.preds, test.preds = [p[:1] for p in val.preds], [p[:1] for p in test.preds]
    val.labels, test.labels = [y[:1] for y in val.labels], [y[:1] for y in test.labels]
    write_report(val, test, ["A"], tmp_path)
    rows = list(csv.reader(io.StringIO((tmp_path / "metrics.csv").read_text())))
    assert rows == [list(KEYS), ["A", "0.5", str(7 / 9), "0.8", "0.5", "0.5", "2", "2"]]


def test_roc_figure_shows_each_label(tmp_path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_roc(TEST, LABELS, tmp_path / "roc.png")
    monkeypatch.undo()
    (fig,) = figures
    try:
        axes = fig.axes
        assert len(axes) == 16
        chance, curve = axes[0].lines
        assert (list(chance.get_xdata()), list(chance.get_ydata())) == ([0, 1], [0, 1])
        fpr, tpr, _ = roc_curve(TEST[0][:, 0], TEST[1][:, 0])
        np.testing.assert_allclose(curve.get_xdata(), fpr)
        np.testing.assert_allclose(curve.get_ydata(), tpr)
        assert [ax.get_title() for ax in axes[:3]] == ["A AUROC 0.500", "B AUROC 0.667", "C: one class only"]
        assert len(axes[2].lines) == 1  # only the chance line for a one-class label
        assert (axes[1].get_xlabel(), axes[1].get_ylabel()) == ("1 - specificity", "sensitivity")
        assert [ax.axison for ax in axes] == [True] * 3 + [False] * 13
    finally:
        plt.close(fig)
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- collecting predictions from an engine


def test_collector_keeps_one_epoch_of_predictions_labels_and_paths() -> None:
    batches = [
        {
            "image_path": ["a.png", "b.png"],
            "p": torch.tensor([[0.1, 0.9], [0.2, 0.8]], dtype=torch.float16),
            "y": [[0, 1], [1, 0]],
        },  # noqa: E501
        {"image_path": ["c.png"], "p": torch.tensor([[0.3, 0.7]], dtype=torch.float16), "y": [[1, 1]]},
    ]
    engine = Engine(lambda e, b: [{"pred": p, "label": torch.tensor(y)} for p, y in zip(b["p"], b["y"])])
    collector = PredictionCollector()
    collector.attach(engine)
    engine.run(batches, max_epochs=2)  # the second epoch starts from scratch
    preds, labels = collector.arrays
    assert preds.dtype == labels.dtype == np.float32
    np.testing.assert_allclose(preds, [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]], atol=1e-3)  # half-precision outputs
    assert labels.tolist() == [[0, 1], [1, 0], [1, 1]]
    assert collector.paths == ["a.png", "b.png", "c.png"]


def test_collector_with_other_keys_and_without_labels() -> None:
    batch = [{"img": "x.dcm", "probs": [0.25, 0.5]}, {"img": "y.dcm", "probs": [0.5, 0.75]}]
    engine = Engine(lambda e, b: [{"probs": item["probs"]} for item in b])
    collector = PredictionCollector(pred_key="probs", label_key="truth", path_key="img")
    collector.attach(engine)
    engine.run([batch])
    assert collector.paths == ["x.dcm", "y.dcm"]
    assert np.stack(collector.preds).tolist() == [[0.25, 0.5], [0.5, 0.75]]
    with pytest.raises(ValueError, match="no labelled predictions collected"):
        collector.arrays  # noqa: B018 - predictions without labels cannot be scored
    with pytest.raises(ValueError, match="no labelled predictions collected"):
        PredictionCollector().arrays  # noqa: B018 - nothing collected


def test_batch_paths_from_dict_or_list_batches() -> None:
    engine = Engine(lambda e, b: b)
    engine.state.output = [{}, {}]
    engine.state.batch = {"image_path": ["a", "b"]}
    assert batch_paths(engine) == ["a", "b"]
    engine.state.batch = {"image": torch.zeros(2)}
    assert batch_paths(engine) == ["", ""]  # one empty path per output item
    engine.state.batch = [{"file": "a"}, {"x": 1}, "not a dict"]
    assert batch_paths(engine, "file") == ["a", "", ""]


# ---------------------------------------------------------------- LabelwiseAUROC (the validation key metric)


def test_labelwise_auroc_handler_per_label_and_nan_mean() -> None:
    scores_a, labels_a = random_label(0, n=12)
    scores_b = np.linspace(0.1, 0.9, 12, dtype=np.float32)
    y_pred = torch.as_tensor(np.stack([scores_a, scores_b], axis=1))
    y = torch.as_tensor(np.stack([labels_a, np.zeros(12, np.float32)], axis=1))  # label B has no positive
    batches = [(y_pred[:5], y[:5]), (y_pred[5:], y[5:])]
    engine = Engine(lambda e, b: b)
    handler = LabelwiseAUROC(["A", "B"])
    handler.attach(engine, "auc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.run(batches)
    assert not [w for w in caught if "can not be all" in str(w.message)]  # the one-class label is expected here
    m = engine.state.metrics
    assert m["auc_A"] == pytest.approx(brute_auroc(scores_a, labels_a))
    assert math.isnan(m["auc_B"])
    assert m["auc"] == pytest.approx(m["auc_A"])  # the mean skips the unscorable label
    assert not hasattr(engine.state, "metric_details")  # no per-image details by default


def test_labelwise_auroc_all_unscorable_is_nan() -> None:
    engine = Engine(lambda e, b: b)
    LabelwiseAUROC(["A", "B"], output_transform=lambda o: (o["pred"], o["label"])).attach(engine, "auc")
    batch = {"pred": torch.tensor([[0.2, 0.3], [0.7, 0.4]]), "label": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NaN by rule, not from averaging nothing
        engine.run([batch])
    assert all(math.isnan(engine.state.metrics[k]) for k in ("auc", "auc_A", "auc_B"))


def test_youden_ties_pick_the_highest_threshold() -> None:
    """Positives 0.9, 0.85, 0.4; negatives 0.8, 0.2, 0.1. J = 2/3 - 0 at t=0.85 and 1 - 1/3 at t=0.4: equal, but
    in floating point 1 - 1/3 > 2/3, so a bare argmax picks 0.4 by rounding. The rule picks the highest, 0.85."""
    scores = np.array([0.9, 0.85, 0.8, 0.4, 0.2, 0.1])
    labels = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    fpr, tpr, thr = roc_curve(scores, labels)
    j = tpr - fpr
    assert j[list(thr).index(0.85)] == pytest.approx(j[list(thr).index(0.4)]) == pytest.approx(2 / 3)
    assert int(np.argmax(j)) == list(thr).index(0.4)  # what rounding alone would choose
    assert youden_threshold(scores, labels) == 0.85


def test_labelwise_auroc_with_one_label_and_without_data() -> None:
    engine = Engine(lambda e, batch: batch)
    handler = LabelwiseAUROC(["Hernia"], output_transform=lambda o: (o["pred"], o["label"]))
    handler.attach(engine, "auc")
    batch = {"pred": [torch.tensor([0.9]), torch.tensor([0.2]), torch.tensor([0.4])],
             "label": [torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0])]}  # fmt: skip
    engine.run([batch])
    assert engine.state.metrics["auc"] == 1.0 and engine.state.metrics["auc_Hernia"] == 1.0
    empty = LabelwiseAUROC(["Hernia"])
    with pytest.raises(ValueError, match="no predictions were collected"):
        empty.metric_fn.aggregate()
