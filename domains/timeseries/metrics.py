"""Attack-detection metrics, as the BATADAL competition scored its teams (Taormina et al., J. Water Resour. Plann.
Manage. 144(8), 2018; the batadal.net rules), plus the usual point-wise and event-wise figures.

Inputs are per-step arrays: ``labels`` (1 = under attack), ``alarms`` (1 = the detector raised an alarm), ``scores``
(the raw anomaly score). An attack is a maximal run of labelled steps.

* BATADAL score S = γ·S_TTD + (1 − γ)·S_CM, γ = 0.5, with S_TTD = 1 − (1/n_a) Σ_i TTD_i/Δt_i (TTD_i: steps from the
  start of attack i to its first alarm, Δt_i: its duration; an undetected attack counts TTD_i = Δt_i) and
  S_CM = (TPR + TNR)/2 over all steps.
* point-wise precision, recall, F1; event-wise recall (attacks with at least one alarm) and mean TTD;
* AUC-PR of the raw score (average precision, the step-wise area Σ_k (R_k − R_{k−1}) P_k over distinct thresholds);
* point-adjusted F1 (Xu et al. 2018: an attack with any alarm counts as wholly detected) — reported separately and
  labelled as such; it rewards a single lucky alarm in a long attack and is never a headline figure.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _binary(x: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or not np.isin(arr, (0, 1, True, False)).all():
        raise ValueError(f"{name} must be a 1-D array of 0/1, got shape {arr.shape}")
    return arr.astype(bool)


def _pair(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, a = _binary(labels, "labels"), _binary(alarms, "alarms")
    if y.shape != a.shape:
        raise ValueError(f"labels has {len(y)} steps but alarms has {len(a)}")
    return y, a


def attack_intervals(labels: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of labelled steps."""
    y = _binary(labels, "labels").astype(np.int8)
    edges = np.diff(np.concatenate([[0], y, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def time_to_detection(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray) -> list[tuple[int, bool]]:
    """(TTD_i, detected_i) per attack: steps from its start to its first alarm inside it; Δt_i if none."""
    y, a = _pair(labels, alarms)
    out = []
    for start, stop in attack_intervals(y):
        hits = np.flatnonzero(a[start:stop])
        out.append((int(hits[0]), True) if len(hits) else (stop - start, False))
    return out


def batadal_score(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray,
                  gamma: float = 0.5) -> dict[str, float]:
    """S = γ S_TTD + (1 − γ) S_CM (Taormina et al. 2018, eqs. 1-3; see the module docstring), with TPR, TNR.

    The rules' worked example: 168 h with one 40 h attack, first alarm 8 h in, the alarm ending 5 h before the
    attack does: TPR = 27/40, TNR = 1, S_CM = 0.8375, S_TTD = 0.8, S = 0.81875."""
    y, a = _pair(labels, alarms)
    if not y.any() or y.all():
        raise ValueError("batadal_score needs both attack and normal steps")
    ttd = time_to_detection(y, a)
    intervals = attack_intervals(y)
    s_ttd = 1.0 - float(np.mean([t / (b - s) for (t, _), (s, b) in zip(ttd, intervals)]))
    tpr, tnr = float((a & y).sum() / y.sum()), float((~a & ~y).sum() / (~y).sum())
    s_cm = 0.5 * (tpr + tnr)
    return {"S": gamma * s_ttd + (1 - gamma) * s_cm, "S_TTD": s_ttd, "S_CM": s_cm, "TPR": tpr, "TNR": tnr}


def precision_recall_f1(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Point-wise P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R) (0 where undefined)."""
    y, a = _pair(labels, alarms)
    tp, fp, fn = int((a & y).sum()), int((a & ~y).sum()), int((~a & y).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "F1": 2 * p * r / (p + r) if p + r else 0.0}


def event_metrics(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Attacks detected (≥ 1 alarm inside), their number, event-wise recall and the mean TTD over detected attacks
    (NaN-free: 0 attacks detected gives mean TTD = the mean duration, as undetected attacks count Δt)."""
    ttd = time_to_detection(labels, alarms)
    detected = [t for t, hit in ttd if hit]
    return {"attacks": len(ttd), "detected": len(detected), "event_recall": len(detected) / len(ttd) if ttd else 0.0,
            "mean_ttd": float(np.mean(detected)) if detected else float(np.mean([t for t, _ in ttd] or [0.0]))}


def average_precision(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """AUC-PR as average precision: AP = Σ_k (R_k − R_{k−1}) P_k over the distinct score thresholds, highest first
    (ties enter together; the definition scikit-learn's ``average_precision_score`` uses)."""
    y = _binary(labels, "labels")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape or not np.isfinite(s).all():
        raise ValueError(f"scores must be finite with the labels' shape {y.shape}, got {s.shape}")
    if not y.any():
        raise ValueError("average_precision needs at least one attack step")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each tie group
    tp = np.cumsum(y)[last]
    precision, recall = tp / (last + 1), tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def point_adjust(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray) -> np.ndarray:
    """Point adjustment (Xu et al., WWW 2018): every step of an attack with any alarm counts as alarmed."""
    y, a = _pair(labels, alarms)
    out = a.copy()
    for start, stop in attack_intervals(y):
        if a[start:stop].any():
            out[start:stop] = True
    return out


def point_adjusted_f1(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray) -> float:
    """F1 after ``point_adjust`` (labelled 'point-adjusted' wherever reported; not the headline F1)."""
    return precision_recall_f1(labels, point_adjust(labels, alarms))["F1"]


def localisation(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray,
                 sensor_scores: np.ndarray, columns: Sequence[str], targets: Sequence[Sequence[str]],
                 k: int = 3) -> dict[str, object]:
    """Per attack: the k sensors with the highest mean per-sensor score over its alarmed steps, and whether one of
    them is a component the attack targets (a column named PREFIX_target: target 'T3' matches 'L_T3', 'PU3'
    matches 'F_PU3' and 'S_PU3').
    Returns the fraction of all attacks localised (undetected attacks count as not localised) and the details."""
    y, a = _pair(labels, alarms)
    intervals = attack_intervals(y)
    if len(targets) != len(intervals):
        raise ValueError(f"{len(targets)} target lists for {len(intervals)} attacks")
    details, hits = [], 0
    for (start, stop), tgt in zip(intervals, targets):
        steps = np.flatnonzero(a[start:stop]) + start
        if not len(steps):
            details.append({"top": [], "hit": False})
            continue
        mean = np.nanmean(sensor_scores[steps], axis=0)
        top = [columns[j] for j in np.argsort(-np.nan_to_num(mean, nan=-np.inf))[:k]]
        hit = any(t == c.split("_", 1)[-1] for c in top for t in tgt)
        hits += hit
        details.append({"top": top, "hit": hit})
    return {"fraction": hits / len(intervals) if intervals else 0.0, "attacks": details}


def detection_report(labels: Sequence[int] | np.ndarray, alarms: Sequence[int] | np.ndarray,
                     scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Everything above in one row: S, S_TTD, S_CM, F1, precision, recall, detected, mean TTD, AUC-PR and the
    (labelled) point-adjusted F1."""
    row: dict[str, float] = {}
    row.update(batadal_score(labels, alarms))
    row.update(precision_recall_f1(labels, alarms))
    row.update(event_metrics(labels, alarms))
    row["auc_pr"] = average_precision(labels, scores)
    row["point_adjusted_F1"] = point_adjusted_f1(labels, alarms)
    return row
