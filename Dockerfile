# ris_dist training image: CUDA PyTorch base + DeepSpeed + this package, non-root user.
#
#   docker build -t ris_dist .                                   # default NVIDIA PyTorch base
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime -t ris_dist .
#   docker run --gpus all --rm -v "$PWD/runs:/opt/ris_dist/runs" ris_dist
#
# The base image brings torch (CUDA build). It is never reinstalled: pip gets a constraint
# that pins torch to the exact version already in the image. See docs/cluster.md.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:24.08-py3
FROM ${BASE_IMAGE}

# Optional: path (inside the build context, copied with the sources) of a CA bundle for pip.
ARG PIP_CERT_FILE=""
ARG RIS_UID=1000

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    DS_BUILD_OPS=0 \
    PYTHONUNBUFFERED=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/ris_dist
COPY . /opt/ris_dist

# torch must come from the base image: pin it to the installed version for every pip call.
RUN if [ -n "${PIP_CERT_FILE}" ]; then export PIP_CERT="/opt/ris_dist/${PIP_CERT_FILE}"; fi \
 && python3 -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch-pin.txt \
 && cat /tmp/torch-pin.txt \
 && DS_BUILD_OPS=0 python3 -m pip install --no-build-isolation -c /tmp/torch-pin.txt deepspeed \
 && python3 -m pip install --no-build-isolation -c /tmp/torch-pin.txt ".[deepspeed]" \
 && python3 -c "import torch, deepspeed, accelerate, ris_dist; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)" \
 && if [ -n "${PIP_CERT_FILE}" ]; then rm -f "/opt/ris_dist/${PIP_CERT_FILE}"; fi

RUN useradd --create-home --uid "${RIS_UID}" --shell /bin/bash ris \
 && mkdir -p /opt/ris_dist/runs \
 && chown -R ris:ris /opt/ris_dist/runs

USER ${RIS_UID}
ENV HOME=/home/ris
CMD ["accelerate", "launch", "-m", "ris_dist.train", "--config", "configs/phase0.yaml"]
