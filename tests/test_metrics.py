import pytest
import torch

from job.metrics import Tally, per_class


def logits_for(preds, num_classes):
    out = torch.zeros(len(preds), num_classes)
    out[torch.arange(len(preds)), torch.tensor(preds)] = 1.0
    return out


def test_metrics_equal_hand_computed_values():
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = [0, 1, 1, 1, 0, 2]
    tally = Tally(3, torch.device("cpu"))
    # two batches, with batch-mean losses 0.3 and 0.6: the epoch loss is the mean over images
    tally.add(logits_for(preds[:2], 3), targets[:2], torch.tensor(0.3))
    tally.add(logits_for(preds[2:], 3), targets[2:], torch.tensor(0.6))
    m = tally.result("val")
    assert m["val_acc"] == pytest.approx(4 / 6)
    assert m["val_loss"] == pytest.approx((0.3 * 2 + 0.6 * 4) / 6)
    # precision 1/2, 2/3, 1; recall 1/2, 1, 1/2; F1 0.5, 0.8, 2/3
    assert m["val_f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert "val_top5" not in m  # fewer than 5 classes
    assert tally.confusion_matrix().tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_top5_and_never_predicted_class():
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    targets = torch.tensor([4, 0, 5])  # rank 5 (in top-5), rank 6 (out), rank 6 (out)
    tally = Tally(6, torch.device("cpu"))
    tally.add(logits, targets, torch.tensor(1.0))
    m = tally.result("val")
    assert m["val_top5"] == pytest.approx(1 / 3)
    assert m["val_acc"] == 0.0
    stats = per_class(tally.confusion_matrix())
    assert stats["precision"].tolist() == [0.0] * 6 and stats["f1"].sum() == 0
    assert stats["support"].tolist() == [1, 0, 0, 0, 1, 1]
