"""job: find the best fine-tuned image classifier for a folder of images.

    import job
    result = job.train({"data": "photos/", "epochs": 5}, "runs/photos")
    model = job.load(result.output)
    model.predict(["photos/cat/1.jpg"])

`job.train`, `job.tune`, `job.load` and `job.export` are the library API (see job/api.py); the `job` command is a thin layer over
them. Importing job imports neither torch nor Ray.
"""

from job.api import export, load, train, tune
from job.config import S3Config, SearchConfig, TrainConfig
from job.errors import BadInput, Interrupted, JobError

__version__ = "0.1.0"
__all__ = ["train", "tune", "load", "export", "TrainConfig", "SearchConfig", "S3Config", "JobError", "BadInput", "Interrupted",
           "Result", "Trial", "Model", "Evaluation"]


def __getattr__(name: str):
    """The result and model types, imported on first use (they bring torch)."""
    if name in ("Result", "Trial"):
        from job import results

        return getattr(results, name)
    if name in ("Model", "Evaluation"):
        from job import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'job' has no attribute {name!r}")
