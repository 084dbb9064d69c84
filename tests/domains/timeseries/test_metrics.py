"""BATADAL's score and the detection metrics on hand-made label/alarm sequences with answers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from sciddpm.domains.timeseries.metrics import (attack_intervals, average_precision, batadal_score, detection_report,
                                                event_metrics, localisation, point_adjust, point_adjusted_f1,
                                                precision_recall_f1, time_to_detection)


def _worked_example() -> tuple[np.ndarray, np.ndarray]:
    """The competition rules' example: 168 h, one 40 h attack, first alarm 8 h in, alarm ending 5 h early."""
    labels, alarms = np.zeros(168, int), np.zeros(168, int)
    labels[60:100] = 1
    alarms[68:95] = 1
    return labels, alarms


def test_the_rules_worked_example():
    score = batadal_score(*_worked_example())
    assert score["TPR"] == pytest.approx(27 / 40) and score["TNR"] == 1.0
    assert round(score["S_CM"], 3) == 0.838 and score["S_CM"] == pytest.approx(0.8375)
    assert score["S_TTD"] == pytest.approx(1 - 8 / 40)
    assert round(score["S"], 3) == 0.819 and score["S"] == pytest.approx(0.81875)


def test_two_attacks_one_missed_and_false_alarms():
    labels, alarms = np.zeros(20, int), np.zeros(20, int)
    labels[2:6] = 1      # 4 steps, detected at once: TTD 0
    labels[10:12] = 1    # 2 steps, missed: TTD = 2 (its duration)
    alarms[2:4] = 1
    alarms[15:17] = 1    # two false alarms
    assert attack_intervals(labels) == [(2, 6), (10, 12)]
    assert time_to_detection(labels, alarms) == [(0, True), (2, False)]
    score = batadal_score(labels, alarms)
    assert score["S_TTD"] == pytest.approx(1 - (0 / 4 + 2 / 2) / 2)
    assert score["TPR"] == pytest.approx(2 / 6) and score["TNR"] == pytest.approx(12 / 14)
    assert score["S"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.5 * (2 / 6 + 12 / 14))
    prf = precision_recall_f1(labels, alarms)
    assert prf["precision"] == pytest.approx(0.5) and prf["recall"] == pytest.approx(2 / 6)
    assert prf["F1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    ev = event_metrics(labels, alarms)
    assert (ev["attacks"], ev["detected"], ev["event_recall"], ev["mean_ttd"]) == (2, 1, 0.5, 0.0)
    # point adjustment fills the detected attack only: TP 4, FP 2, FN 2
    assert point_adjust(labels, alarms).astype(int).tolist()[2:6] == [1, 1, 1, 1]
    assert point_adjusted_f1(labels, alarms) == pytest.approx(2 * (4 / 6) * (4 / 6) / (8 / 6))


def test_average_precision_by_hand_and_against_scikit_learn():
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.6, 0.1])
    # thresholds: 0.9 -> P 1, R 1/3; 0.8 -> P 1/2, R 1/3; 0.7 -> P 2/3, R 2/3; 0.6 (tie) -> P 2/5; 0.1 -> P 1/2, R 1
    assert average_precision(labels, scores) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 1 / 2)
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    s = np.round(rng.random(300) + y * 0.3, 2)  # rounded: many ties
    assert average_precision(y, s) == pytest.approx(sklearn.average_precision_score(y, s), abs=1e-12)


def test_localisation_counts_an_attack_when_a_target_is_in_the_top_k():
    labels, alarms = np.zeros(10, int), np.zeros(10, int)
    labels[1:4], labels[6:9] = 1, 1
    alarms[2:4] = 1                     # second attack undetected
    scores = np.zeros((10, 4))
    scores[2:4, 2] = 5.0                # F_PU3 highest during the first attack's alarms
    out = localisation(labels, alarms, scores, ["L_T1", "L_T3", "F_PU3", "P_J14"], [["PU3"], ["T1"]], k=1)
    assert out["fraction"] == 0.5 and out["attacks"][0] == {"top": ["F_PU3"], "hit": True}
    assert out["attacks"][1]["hit"] is False


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="labels has 3 steps but alarms has 2"):
        batadal_score([0, 1, 0], [0, 1])
    with pytest.raises(ValueError, match="both attack and normal"):
        batadal_score([0, 0], [0, 1])
    with pytest.raises(ValueError, match="alarms must be a 1-D array of 0/1"):
        precision_recall_f1([0, 1], [0, 2])
    with pytest.raises(ValueError, match="finite"):
        average_precision([0, 1], [0.1, float("nan")])
    row = detection_report(*_worked_example(), np.arange(168.0))
    assert set(row) >= {"S", "S_TTD", "S_CM", "F1", "precision", "recall", "detected", "mean_ttd", "auc_pr",
                        "point_adjusted_F1"}
