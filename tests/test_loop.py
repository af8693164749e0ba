import pytest
import torch

from job import bundle, checkpoint, data, loop, model, run
from job.config import TrainConfig


def tiny(images, **kw) -> TrainConfig:
    return TrainConfig(**{"data": str(images), "model": "resnet18", "weights": "none", "image_size": 32,
                          "batch_size": 8, "epochs": 3, "lr": 0.05, **kw})


def no_timing(history):
    return [{k: v for k, v in h.items() if k not in ("epoch_s", "images_per_s")} for h in history]


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


def test_resume_ends_equal_to_an_uninterrupted_run(images, tmp_path):
    cfg = tiny(images, scheduler="step", step_size=1, gamma=0.5)
    whole = run.train(cfg, tmp_path / "whole")

    def stop_after_two(epoch):
        if epoch.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.train(cfg, tmp_path / "cut", on_epoch=stop_after_two)
    state = checkpoint.load(tmp_path / "cut")
    assert state["epoch"] == 2 and not (tmp_path / "cut" / bundle.BEST_DIR).exists()
    resumed = run.train(TrainConfig.from_dict(state["config"]), tmp_path / "cut", resume=state)
    assert resumed.resumed_from == 2
    assert no_timing(resumed.history) == no_timing(whole.history)
    a = torch.load(whole.bundle / bundle.WEIGHTS, weights_only=True)
    b = torch.load(resumed.bundle / bundle.WEIGHTS, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_and_bundle_round_trip_give_identical_predictions(images, tmp_path, cache):
    cfg = tiny(images, epochs=1)
    result = run.train(cfg, tmp_path / "r")
    s = run.setup(cfg, cache)
    x, _ = next(iter(s.fit.val))
    x = data.normalise(x, s.prep)

    restored = run.setup(cfg, cache).fit
    assert checkpoint.load(tmp_path / "r")["best_model"] is None  # the best epoch is the last: its weights once
    restored.restore(checkpoint.load(tmp_path / "r"))
    trained = model.create("resnet18", "none", 3)
    trained.load_state_dict(checkpoint.load(tmp_path / "r")["model"])
    trained = trained.to(memory_format=torch.channels_last)  # as job trains and predicts, on every device
    b = bundle.load(result.bundle)
    with torch.no_grad():
        expected = trained.eval()(x)
        assert torch.equal(restored.model.eval()(x), expected)
        assert torch.equal(b.model(x), expected)  # 1 epoch: the best epoch is the last
    assert b.classes == ("class_0", "class_1", "class_2") and b.prep == s.prep
    assert b.manifest["metrics"]["val_acc"] == result.best["val_acc"]
    assert b.manifest["config"] == cfg.to_dict()


def test_bundle_with_a_damaged_file_is_refused(images, tmp_path):
    result = run.train(tiny(images, epochs=1), tmp_path / "r")
    with open(result.bundle / bundle.WEIGHTS, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(Exception, match="does not match bundle.json"):
        bundle.load(tmp_path / "r")


def test_diverging_loss_stops_with_a_clear_error(images, tmp_path):
    with pytest.raises(loop.Diverged, match="train_loss = (nan|inf).*lower lr"):
        run.train(tiny(images, lr=1e12, epochs=1), tmp_path / "r")


@pytest.mark.parametrize("options", [{"scheduler": "cosine", "optimizer": "adamw", "lr": 0.003},
                                     {"scheduler": "plateau", "loss": "focal"},
                                     {"label_smoothing": 0.1, "freeze_backbone": True}])
def test_options_train(images, tmp_path, options):
    result = run.train(tiny(images, epochs=2, **options), tmp_path / "r")
    assert len(result.history) == 2 and all(h["train_loss"] > 0 for h in result.history)
