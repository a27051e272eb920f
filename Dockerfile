# voxgate on the embedded default engines (CPU). Not built in CI here: this workplace has no Docker engine.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake espeak-ng git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN bash scripts/setup.sh
ENV VOXGATE_HOST=0.0.0.0 VOXGATE_DATA_DIR=/data MALLOC_ARENA_MAX=2
EXPOSE 8000
CMD [".venv/bin/voxgate", "serve"]
