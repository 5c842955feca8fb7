"""trainers/swav/knn.py: the kNN monitor: the weighted vote, the object crops, the recalibrated statistics, and its
place in SwAV training (reported at the due epochs, read against random initialisations and raw pixels, never
changing what is trained); the linear probe and the effective rank beside it."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import pytest
import torch

from trainers.checkpoints import load_checkpoint
from trainers.common.configs import config_from_dict
from trainers.common.provenance import seed_everything
from trainers.reporting import InMemoryReporter
from trainers.resnet import build_trunk
from trainers.swav import engine as swav_engine
from trainers.swav.config import SwAVConfig
from trainers.swav.engine import train
from trainers.swav.knn import (RANDOM_TRUNKS, KnnMonitor, effective_rank, embed, knn_monitor, linear_probe_top1,
                               object_crops, recalibrated, weighted_knn_top1)

from tests.trainers.cuda import cuda_only
from tests.trainers.swav.helpers import TINY, knn_paths


def reference_vote(bank, bank_labels, queries, num_classes, k, temperature) -> torch.Tensor:
    """The weighted vote written out per query (Wu et al. 2018)."""
    predictions = []
    for q in queries:
        sims = bank @ q
        order = sorted(range(len(bank)), key=lambda i: -float(sims[i]))[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(bank_labels[i])] += math.exp(float(sims[i]) / temperature)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(predictions)


def test_weighted_vote_matches_the_reference_and_chunks_agree() -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(25, 8, generator=g), dim=1)
    bank_labels = torch.randint(0, 4, (60,), generator=g)
    predicted = reference_vote(bank, bank_labels, queries, 4, k=20, temperature=0.07)
    for query_labels in (predicted, (predicted + 1) % 4):
        expected = float((predicted == query_labels).float().mean())
        for chunk in (1, 7, 1024):
            got = weighted_knn_top1(bank, bank_labels, queries, query_labels, 4, k=20, temperature=0.07, chunk=chunk)
            assert got == pytest.approx(expected)
    assert weighted_knn_top1(bank, bank_labels, queries, predicted, 4) == 1.0
    assert weighted_knn_top1(bank, bank_labels, queries, (predicted + 1) % 4, 4) == 0.0


def test_weights_decide_between_near_and_many_far_neighbours() -> None:
    # One neighbour at similarity 1 outvotes four at similarity 0.5 with T = 0.07, not with a huge T.
    bank = torch.tensor([[1.0, 0.0]] + [[0.5, math.sqrt(0.75)]] * 4)
    labels = torch.tensor([0, 1, 1, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert weighted_knn_top1(bank, labels, query, torch.tensor([0]), 2, k=20, temperature=0.07) == 1.0
    assert weighted_knn_top1(bank, labels, query, torch.tensor([0]), 2, k=20, temperature=1e6) == 0.0
    assert weighted_knn_top1(bank, labels, query, torch.tensor([0]), 2, k=1) == 1.0  # k above the bank: all used
    with pytest.raises(ValueError, match="at least one"):
        weighted_knn_top1(bank[:0], labels[:0], query, torch.tensor([0]), 2)


def test_object_crops_cut_every_box_with_shared_labels(sample_data) -> None:
    coco = json.loads(Path(sample_data.train_annotations).read_text())
    boxes = [a for a in coco["annotations"] if not a.get("iscrowd", 0)]
    crops, index = object_crops(sample_data.train_images, sample_data.train_annotations, 24, 10_000, seed=0)
    assert crops.images.shape == (len(boxes), 3, 24, 24) and crops.images.dtype == torch.uint8
    assert sorted(index) == sorted(c["id"] for c in coco["categories"])
    counts = torch.bincount(crops.labels, minlength=len(index)).tolist()
    by_category = [sum(a["category_id"] == cat for a in boxes) for cat in sorted(index, key=index.get)]
    assert counts == by_category
    assert crops.images.float().std() > 10  # image content, not an empty canvas

    # Above max_objects: a subset drawn from the seed alone, the same twice, another for another seed.
    few, _ = object_crops(sample_data.train_images, sample_data.train_annotations, 24, 5, seed=1)
    again, _ = object_crops(sample_data.train_images, sample_data.train_annotations, 24, 5, seed=1)
    other, _ = object_crops(sample_data.train_images, sample_data.train_annotations, 24, 5, seed=2)
    assert len(few) == 5 and torch.equal(few.images, again.images)
    assert not torch.equal(few.images, other.images)
    # The queries take the bank's labelling (a category unseen in the bank gets a new index).
    _, shared = object_crops(sample_data.val_images, sample_data.val_annotations, 24, 10, 0, {999: 0})
    assert shared[999] == 0 and set(shared.values()) == set(range(len(shared)))


def test_monitor_scores_queries_identical_to_the_bank_perfectly(sample_data) -> None:
    torch.manual_seed(0)
    trunk = build_trunk("resnet18")
    train_set = (sample_data.train_images, sample_data.train_annotations)
    monitor = KnnMonitor.from_coco(train_set, train_set, 24, 40, seed=0, device=torch.device("cpu"))
    monitor.queries = monitor.bank  # every query has itself in the bank at similarity 1
    monitor._query_labels = monitor._bank_labels
    trunk.train()
    assert monitor(trunk) == 1.0
    assert trunk.training  # put back as it was
    features = embed(trunk, monitor.bank.images[:3], torch.device("cpu"))
    assert torch.allclose(features.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("norm", [torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm])
def test_recalibrated_holds_the_crops_exact_statistics_and_puts_the_trunks_back(norm) -> None:
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), norm(4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    trunk[1].running_mean.fill_(0.3)  # statistics of its own, which must come back
    trunk.train()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    crops = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    rng = torch.get_rng_state()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        conv = trunk[0]((crops.float() / 255 - mean) / std)
    with recalibrated(trunk, crops, torch.device("cpu"), batch_size=4) as calibrated:  # batches of 4, 4 and 2
        bn = calibrated[1]
        assert type(bn) is torch.nn.BatchNorm2d and not calibrated.training  # one process, eval mode
        # the running statistics: the average over the batches of each batch's mean and unbiased variance
        means = [conv[i:i + 4].mean(dim=(0, 2, 3)) for i in (0, 4, 8)]
        variances = [conv[i:i + 4].var(dim=(0, 2, 3), unbiased=True) for i in (0, 4, 8)]
        assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
        assert torch.allclose(bn.running_var, torch.stack(variances).mean(0), atol=1e-4)
        assert torch.equal(bn.weight, trunk[1].weight)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in trunk.state_dict().items())  # its own statistics, bit for bit
    assert trunk.training and trunk[1].momentum == 0.1


def test_training_reports_knn_and_is_unchanged_by_the_monitor(sample_data, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    base = {**TINY, "data": str(sample_data.unlabeled), "epochs": 3, "max_images": 8}
    with caplog.at_level(logging.WARNING, logger="trainers.swav"):
        plain = InMemoryReporter(root=tmp_path / "plain")
        train(config_from_dict(SwAVConfig, base), plain)
    off = [r for r in caplog.records if "kNN monitor off" in r.getMessage()]
    assert len(off) == 1  # said once per run, not per epoch
    assert not any("swav/knn_top1" in r.metrics for r in plain.reports)

    config = config_from_dict(SwAVConfig, {**base, **knn_paths(sample_data), "knn_every": 2, "knn_max_objects": 30})
    watched = InMemoryReporter(root=tmp_path / "watched")
    train(config, watched)
    assert ["swav/knn_top1" in r.metrics for r in watched.reports] == [False, True, True]  # epochs 2 and 3 (last)
    randoms = {r.metrics["swav/knn_top1_random"] for r in watched.reports}
    assert len(randoms) == 1 and 0 < randoms.pop() <= 1
    assert 0 <= watched.reports[-1].metrics["swav/knn_top1"] <= 1
    # The monitor only reads the trunk (eval mode, no RNG): the trained weights are bit-identical.
    a, b = load_checkpoint(plain.last_checkpoint)["model"], load_checkpoint(watched.last_checkpoint)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)

    # The random figures: mean and std over RANDOM_TRUNKS initialisations, the run's own initial trunk first
    # (rebuilt from the seed, so a resume gets the same), and the raw pixels' figures, on every report.
    monitor = knn_monitor(config, torch.device("cpu"))
    seed_everything(config.seed)
    fresh = swav_engine.SwAVModel(config.arch, config.norm, config.prototypes, config.feat_dim, config.hidden_dim)
    seeds = swav_engine.random_seeds(config)
    assert len(seeds) == RANDOM_TRUNKS >= 5 and seeds[0] == config.seed and len(set(seeds)) == len(seeds)
    spread = monitor.random_spread(config.arch, config.norm, seeds)
    assert spread[0] == monitor.evaluate(fresh.trunk)
    first = watched.reports[0].metrics
    assert first["swav/knn_top1_random"] == pytest.approx(statistics.fmean(s.knn for s in spread))
    assert first["swav/knn_top1_random_std"] == pytest.approx(statistics.stdev(s.knn for s in spread))
    assert first["swav/trunk_rank_random_std"] > 0  # five different initialisations
    assert swav_engine.monitor_references(monitor, config) == {k: first[k] for k in swav_engine.REFERENCE_NAMES}
    assert all(0 <= first[f"swav/{n}_pixels"] <= 1 for n in ("knn_top1", "probe_top1"))
    last = watched.reports[-1].metrics
    assert {"swav/probe_top1", "swav/trunk_rank"} <= set(last) and last["swav/collapsed"] in (0.0, 1.0)


def test_linear_probe_and_effective_rank_on_planted_features() -> None:
    generator = torch.Generator().manual_seed(0)
    # Three classes, each a cloud around its own direction in 16 dimensions: separable by a linear map.
    centres = torch.randn(3, 16, generator=generator) * 3
    labels = torch.arange(90) % 3
    features = centres[labels] + torch.randn(90, 16, generator=generator)
    assert linear_probe_top1(features[:60], labels[:60], features[60:], labels[60:], 3) == 1.0
    # Labels unrelated to the features: the probe is near chance, never perfect.
    shuffled = labels[torch.randperm(90, generator=generator)]
    assert linear_probe_top1(features[:60], shuffled[:60], features[60:], shuffled[60:], 3) < 0.7
    # RankMe: equal singular values over d directions give d; a rank-one matrix gives 1.
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)
    assert effective_rank(torch.ones(10, 4)) == pytest.approx(1.0, abs=1e-6)
    spread = torch.randn(200, 32, generator=generator)
    squashed = spread * torch.tensor([10.0] * 2 + [0.01] * 30)
    assert effective_rank(squashed) < 3 < 25 < effective_rank(spread) <= 32


@cuda_only
def test_monitor_on_cuda_embeds_as_on_the_cpu(sample_data) -> None:
    torch.manual_seed(0)
    trunk = build_trunk("resnet18").eval()
    train_set = (sample_data.train_images, sample_data.train_annotations)
    monitor = KnnMonitor.from_coco(train_set, train_set, 24, 40, seed=0, device=torch.device("cpu"))
    images = monitor.bank.images[:8]
    on_cpu = embed(trunk, images, torch.device("cpu"))
    on_cuda = embed(trunk.cuda(), images, torch.device("cuda"))
    assert on_cuda.device.type == "cuda" and torch.allclose(on_cuda.cpu(), on_cpu, atol=2e-3)
