"""job: find the best fine-tuned image classifier for a folder of images."""

__version__ = "0.1.0"
