"""report.html, opened by headless Chromium: built from the DOM the browser made and the pixels it drew, not only
written. The page of a real search is checked in tests/test_tune.py; here, what a hostile data set puts on it."""

import re

import numpy as np

from job import page
from tests.conftest import chromium

TRIALS = [
    {"number": 1, "trial_id": "a1", "lr": 0.01, "optimizer": "sgd", "epochs": 3, "val_acc": 0.9, "best_epoch": 2,
     "status": "completed", "error": "", "history": [{"epoch": e, "val_acc": 0.5 + 0.2 * e} for e in (1, 2, 3)]},
    {"number": 2, "trial_id": "b2", "lr": 0.5, "optimizer": "<b>adamw</b>", "epochs": 1, "val_acc": 0.3,
     "best_epoch": 1, "status": "errored", "error": "<script>document.title='owned'</script>",
     "history": [{"epoch": 1, "val_acc": 0.3}]},
]


def test_the_page_shows_data_from_outside_as_text_and_draws_its_plots(tmp_path):
    classes = ["cat", "<img src=x onerror=alert(1)>", "dog & co"]
    path = tmp_path / "report.html"
    page.write(path, title="job tune: runs/ray/x", summary=["2 trials"], trials=TRIALS, params=["lr", "optimizer"],
               metric="val_acc", best_id="a1", importances={"lr": 0.8, "optimizer": 0.2},
               confusion=[[5, 1, 0], [0, 6, 0], [1, 0, 4]], classes=classes, study_command="optuna-dashboard j")
    dom, pixels = chromium(path, tmp_path)
    assert "<title>job tune: runs/ray/x</title>" in dom  # the error's script did not run
    assert "<script" not in dom and "<img src=x" not in dom and "&lt;img src=x onerror=alert(1)&gt;" in dom
    rows = re.findall(r"<tr( class=\"best\")?><td>(\d+)</td><td class=\"text\">(\w+)</td>", dom)
    assert [(bool(best), trial) for best, _, trial in rows] == [(True, "a1"), (False, "b2")]
    assert dom.count('src="data:image/png;base64,') == 2 and 'id="importances"' in dom
    # the embedded plots were decoded and drawn: matplotlib's first line colour and the Blues map are on screen
    blue = (np.abs(pixels.astype(int) - [31, 119, 180]).sum(axis=2) < 30).sum()
    dark_blue = ((pixels[..., 2] > 100) & (pixels[..., 0] < 60) & (pixels[..., 1] < 100)).sum()
    assert blue > 200 and dark_blue > 500, (blue, dark_blue)
