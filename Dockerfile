# cnnx with CUDA: build, then train on the GPU (the NVIDIA Container Toolkit provides the driver):
#   docker build -t cnnx .
#   docker run --gpus all cnnx cnnx train --device cuda
# Fashion-MNIST comes from Debian/Ubuntu's dataset-fashion-mnist package
# (/usr/share/datasets/fashion-mnist), so training needs no download.
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/cnnx/bin:$PATH \
    CUPY_CACHE_DIR=/var/cache/cupy

# Distribution packages follow the base image's release; pinning them would break its updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md LICENSE /src/
COPY cnnx /src/cnnx
RUN python3 -m venv /opt/cnnx \
    && pip install "/src[cuda12]" \
    && mkdir -p /var/cache/cupy && chmod 1777 /var/cache/cupy

WORKDIR /work
CMD ["cnnx", "info"]
