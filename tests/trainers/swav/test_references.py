"""trainers/swav/references.py: the kNN monitor's figures and how they read without torch: one trunk's scores under
their metric keys, the spread over random initialisations, the "learned" rule and the text with its references."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from trainers.swav.references import MonitorScores, learned, monitor_text, spread_metrics


def test_monitor_text_and_learned_read_the_spread() -> None:
    metrics = {"swav/knn_top1": 0.45, "swav/knn_top1_random": 0.30, "swav/knn_top1_random_std": 0.02,
               "swav/knn_top1_pixels": 0.71}
    assert monitor_text(metrics) == "0.450 (random 0.300 ± 0.020, pixels 0.710)"
    assert learned(metrics) is True
    assert learned({**metrics, "swav/knn_top1": 0.39}) is False  # under 10 points above the mean
    assert learned({**metrics, "swav/knn_top1_random_std": 0.08}) is False  # inside two std of the spread
    assert learned({}) is None and monitor_text({}) == "-"


def test_scores_are_reported_under_their_metric_keys_and_references() -> None:
    scores = MonitorScores(knn=0.4, probe=0.55, rank=12.5)
    assert math.isnan(scores.knn_z)  # not measured: NaN, never a made-up figure
    assert {k: v for k, v in scores.values().items() if k != "swav/knn_z_top1"} == {
        "swav/knn_top1": 0.4, "swav/probe_top1": 0.55, "swav/trunk_rank": 12.5}
    pixels = MonitorScores(knn=0.7, probe=0.8, rank=3.0, knn_z=0.6).metrics("_pixels")
    assert pixels == {"swav/knn_top1_pixels": 0.7, "swav/knn_z_top1_pixels": 0.6, "swav/probe_top1_pixels": 0.8,
                      "swav/trunk_rank_pixels": 3.0}
    assert MonitorScores(0.1, 0.2, 3.0, 0.4).metrics() == MonitorScores(0.1, 0.2, 3.0, 0.4).values()


def test_spread_is_the_mean_and_sample_std_over_initialisations() -> None:
    spread = spread_metrics([MonitorScores(0.2, 0.3, 10.0, 0.1), MonitorScores(0.3, 0.5, 20.0, 0.2),
                             MonitorScores(0.4, 0.4, 30.0, 0.3)])
    assert len(spread) == 8  # four figures, a mean and a std each
    assert spread["swav/knn_top1_random"] == pytest.approx(0.3)
    assert spread["swav/knn_top1_random_std"] == pytest.approx(0.1)  # sample std (n - 1), as statistics.stdev
    assert spread["swav/probe_top1_random"] == pytest.approx(0.4)
    assert spread["swav/trunk_rank_random"] == pytest.approx(20.0)
    assert spread["swav/trunk_rank_random_std"] == pytest.approx(10.0)
    assert spread["swav/knn_z_top1_random"] == pytest.approx(0.2)
    # One initialisation has no spread: std 0, not an error.
    one = spread_metrics([MonitorScores(0.25, 0.5, 7.0, 0.2)])
    assert one["swav/knn_top1_random"] == 0.25 and one["swav/knn_top1_random_std"] == 0.0


def test_the_text_shows_the_references_it_has_and_learned_needs_both_figures() -> None:
    assert monitor_text({"swav/knn_top1": 0.5}) == "0.500"
    assert monitor_text({"swav/knn_top1": 0.5, "swav/knn_top1_random": 0.3}) == "0.500 (random 0.300)"
    assert monitor_text({"swav/knn_top1": 0.5, "swav/knn_top1_pixels": 0.25}) == "0.500 (pixels 0.250)"
    probe = {"swav/probe_top1": 0.876, "swav/probe_top1_random": 0.5, "swav/probe_top1_random_std": 0.04}
    assert monitor_text(probe, what="swav/probe_top1", digits=2) == "0.88 (random 0.50 ± 0.04)"
    assert monitor_text(probe) == "-"  # the kNN figure by default: absent here
    assert learned({"swav/knn_top1": 0.9}) is None  # no random reference: not known
    assert learned({"swav/knn_top1_random": 0.3}) is None
    assert learned({"swav/knn_top1": 0.45, "swav/knn_top1_random": 0.3}) is True  # no std: the points alone
    assert learned({"swav/knn_top1": 0.45, "swav/knn_top1_random": 0.3}, points=0.2) is False


def test_the_figures_load_without_torch() -> None:
    """``ablate status`` and the report read these from stored metrics: no torch import on the way."""
    code = ("import sys\nfrom trainers.swav.references import learned, monitor_text\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
