# One image, two roles: `cnnviz serve` (API) or `cnnviz worker` (jobs).
#   CPU (default):  docker build -t cnnviz .
#   GPU:            docker build -t cnnviz:cuda --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                                  --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# The model weights come from PyPI wheels at build time; nothing is downloaded at run time.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CNNVIZ_HOST=0.0.0.0 \
    CNNVIZ_PORT=8000

# CUDA base images have no Python 3.11; install it there (a no-op on python:3.11-slim).
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
        && ln -sf /usr/bin/python3.11 /usr/local/bin/python && rm -rf /var/lib/apt/lists/*; \
    fi \
    && apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv
# g++: predict's compiled forward (core/compiled.py) generates C++ kernels; keep Inductor's cache on a volume
# (TORCHINDUCTOR_CACHE_DIR) so that a restart compiles in seconds.
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Dependencies first (torch from the CPU or CUDA index), so code edits do not reinstall them.
COPY pyproject.toml README.md ./
RUN pip install --extra-index-url "${TORCH_INDEX}" "torch>=2.6" "torchvision>=0.21"
COPY cnnviz ./cnnviz
COPY service ./service
COPY workers ./workers
RUN pip install --extra-index-url "${TORCH_INDEX}" ".[lite,onnx]"   # [onnx]: arch = "onnx" models (deploy/kserve)

RUN useradd --system --uid 10001 --home /app cnnviz
USER cnnviz
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
ENTRYPOINT ["cnnviz"]
CMD ["serve"]
