"""Classification metrics, accumulated on the device without a host sync per batch.

One name per metric, used everywhere (loop, search, manifest, logs): train_loss, train_acc, val_loss, val_acc
(top-1), val_top5, val_f1_macro, lr, epoch_s, images_per_s.
"""

from __future__ import annotations

import torch

from job.config import EPOCH_METRICS  # noqa: F401 (named with the settings, re-exported here)


class Tally:
    """Running loss, top-1/top-5 hits and the confusion matrix of one phase; all device tensors until `result`."""

    def __init__(self, num_classes: int, device: torch.device):
        self.num_classes = num_classes
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.top5 = torch.zeros((), dtype=torch.int64, device=device)
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.count = 0  # known on the host without a sync

    @torch.no_grad()
    def add(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """logits (B, C), targets (B,), loss: the batch mean."""
        n = targets.shape[0]
        self.loss_sum += loss.detach().double() * n
        preds = logits.argmax(dim=1)
        self.confusion += torch.bincount(targets * self.num_classes + preds, minlength=self.num_classes**2)
        if self.num_classes >= 5:
            self.top5 += (logits.topk(5, dim=1).indices == targets[:, None]).any(dim=1).sum()
        self.count += n

    def running(self) -> tuple[float, float]:
        """(mean loss, accuracy) so far: one host sync, so call it rarely."""
        hits = self.confusion.view(self.num_classes, self.num_classes).diagonal().sum()
        count = max(self.count, 1)
        return self.loss_sum.item() / count, hits.item() / count

    def result(self, prefix: str) -> dict[str, float]:
        cm = self.confusion.view(self.num_classes, self.num_classes).cpu()
        loss, acc = self.running()
        out = {f"{prefix}_loss": loss, f"{prefix}_acc": acc}
        if prefix == "val":
            if self.num_classes >= 5:
                out["val_top5"] = self.top5.item() / max(self.count, 1)
            out["val_f1_macro"] = per_class(cm)["f1"].mean().item()
        return out

    def confusion_matrix(self) -> torch.Tensor:
        return self.confusion.view(self.num_classes, self.num_classes).cpu()


def per_class(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and support per class from a (true, predicted) confusion matrix.

    A class never predicted has precision 0 (sklearn's zero_division=0), so macro F1 punishes ignored classes.
    """
    cm = confusion.double()
    tp = cm.diagonal()
    predicted, actual = cm.sum(dim=0), cm.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}
