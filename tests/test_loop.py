import pytest
import torch

from job import data, loop, run
from job.config import TrainConfig


def tiny(images, **kw) -> TrainConfig:
    return TrainConfig(**{"data": str(images), "model": "tiny_cnn", "weights": "none", "image_size": 32,
                          "batch_size": 8, "epochs": 3, "lr": 0.05, **kw})


def test_loss_falls_when_overfitting_one_batch(images, cache):
    s = run.setup(tiny(images, augment=False), cache)
    x, y = next(iter(s.fit.train))
    x = data.normalise(x, s.prep)
    net, opt, loss_fn = s.fit.model, s.fit.optimizer, s.fit.loss_fn
    net.train()
    losses = []
    for _ in range(25):
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


def test_diverging_loss_stops_with_a_clear_error(images, tmp_path):
    with pytest.raises(loop.Diverged, match="train_loss = (nan|inf).*lower lr"):
        run.train(tiny(images, lr=1e12, epochs=1), tmp_path / "r")


def test_cosine_schedule_with_adamw_lowers_the_lr_every_epoch(images, cache):
    s = run.setup(tiny(images, scheduler="cosine", optimizer="adamw", lr=0.003), cache)
    lrs = [e.metrics["lr"] for e in s.fit]
    assert isinstance(s.fit.optimizer, torch.optim.AdamW)
    assert lrs[0] == pytest.approx(0.003) and lrs[0] > lrs[1] > lrs[2], lrs


def test_focal_loss_weighs_easy_examples_less_and_plateau_keeps_the_lr(images, cache):
    s = run.setup(tiny(images, scheduler="plateau", loss="focal", epochs=2, step_size=3), cache)
    assert isinstance(s.fit.loss_fn, loop.FocalLoss)
    logits, targets = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0]]), torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, targets)
    assert 0 < s.fit.loss_fn(logits, targets) < ce
    assert [e.metrics["lr"] for e in s.fit] == [0.05, 0.05]  # patience 3: no decay within 2 epochs


def test_freeze_backbone_changes_only_the_head(images, cache):
    s = run.setup(tiny(images, label_smoothing=0.1, freeze_backbone=True, epochs=1), cache)
    before = {k: v.clone() for k, v in s.fit.model.state_dict().items()}
    list(s.fit)
    after = s.fit.model.state_dict()
    changed = {k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("4.") for k in changed if "running_" not in k), changed
