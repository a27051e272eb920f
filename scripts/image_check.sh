#!/usr/bin/env bash
# Build the container image from ./Dockerfile and run it: /health/ready answers and a typed turn over /v1/voice
# is answered. No Docker engine needed: buildah with chroot isolation, on a local debian:bookworm-slim made
# from Debian's packages by debootstrap (docs/deploy.md, "The image in CI"). Called by .ci/run after the tests.
#
# Cached for the next run: the base image's root file system (~/.cache/voxgate/images), buildah's layers
# (/var/lib/containers) and setup.sh's llama-cpp-python wheel, which goes into the build context.
# Environment: VOXGATE_IMAGE (tag, default localhost/voxgate:ci), VOXGATE_IMAGE_CACHE, VOXGATE_DEBIAN_MIRROR,
# VOXGATE_IMAGE_READY_S (how long the server may take to be ready, default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

IMAGE=${VOXGATE_IMAGE:-localhost/voxgate:ci}
BASE=docker.io/library/debian:bookworm-slim
MIRROR=${VOXGATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${VOXGATE_IMAGE_CACHE:-$HOME/.cache/voxgate/images}
READY_S=${VOXGATE_IMAGE_READY_S:-300}
LLAMA_VERSION=0.3.36 # as scripts/setup.sh and the Dockerfile
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

start=$SECONDS
step() { printf '[image-check %4ds] %s\n' "$((SECONDS - start))" "$*"; }
fail() {
  printf '[image-check %4ds] FAILED: %s\n' "$((SECONDS - start))" "$*" >&2
  exit 1
}
# Mirrors hiccup: a download that fails is tried once more before the check fails.
retry() { "$@" || { step "failed, retrying once in 10 s: $*"; sleep 10; "$@"; }; }

work=$(mktemp -d /tmp/voxgate-image-check.XXXXXX)
ctr=""
server_pid=""
# SIGTERM to the server itself, as `docker stop` sends it to the container's first process: signalling
# buildah's process group instead kills its chroot helpers, and the server dies without draining.
stop_server() {
  local inner
  inner=$(pgrep -g "$server_pid" -f '/bin/python[0-9.]* .*voxgate serve' | head -n 1 || true)
  if [ -n "$inner" ]; then $SUDO kill -TERM "$inner" 2>/dev/null || true; fi
  for _ in $(seq 1 60); do [ -e "/proc/$server_pid" ] || return 0; sleep 0.5; done
  return 1
}
cleanup() {
  if [ -n "$server_pid" ] && [ -e "/proc/$server_pid" ]; then
    stop_server || $SUDO kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  if [ -n "$ctr" ]; then $SUDO buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  $SUDO rm -rf "$work"
}
trap cleanup EXIT

# 1. The tools (Debian packages).
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  step "installing buildah and debootstrap"
  apt_get() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq "$@"; }
  retry apt_get update || fail "apt-get update failed (twice): is the Debian mirror reachable?"
  retry apt_get install -y buildah debootstrap >/dev/null || fail "apt-get install buildah debootstrap failed"
fi

# 2. The base image: a debian:bookworm-slim from Debian's packages, made once.
if ! $SUDO buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  rootfs_tar=$CACHE/debian-bookworm-minbase.tar
  if [ ! -s "$rootfs_tar" ]; then
    step "debootstrap bookworm (minbase) from $MIRROR"
    mkdir -p "$CACHE"
    bootstrap() {
      $SUDO rm -rf "$work/rootfs"
      $SUDO debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1
    }
    retry bootstrap || fail "debootstrap failed (twice); its log: $(tail -n 20 "$work/debootstrap.log")"
    # What the official slim image adds: bookworm-updates and security in the sources, and no docs or
    # man pages from later apt-get installs.
    printf '%s\n' "Types: deb" "URIs: $MIRROR" "Suites: bookworm bookworm-updates" "Components: main" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" "" "Types: deb" \
      "URIs: http://deb.debian.org/debian-security" "Suites: bookworm-security" "Components: main" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
      $SUDO tee "$work/rootfs/etc/apt/sources.list.d/debian.sources" >/dev/null
    $SUDO rm -f "$work/rootfs/etc/apt/sources.list"
    printf '%s\n' "path-exclude /usr/share/doc/*" "path-include /usr/share/doc/*/copyright" \
      "path-exclude /usr/share/man/*" "path-exclude /usr/share/info/*" "path-exclude /usr/share/locale/*" |
      $SUDO tee "$work/rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null
    $SUDO rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    $SUDO tar -C "$work/rootfs" -cf "$rootfs_tar.partial" . && mv "$rootfs_tar.partial" "$rootfs_tar"
    $SUDO rm -rf "$work/rootfs"
  fi
  step "making the local $BASE from $rootfs_tar"
  mkdir -p "$work/base"
  ln "$rootfs_tar" "$work/base/rootfs.tar" 2>/dev/null || cp "$rootfs_tar" "$work/base/rootfs.tar"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' >"$work/base/Containerfile"
  $SUDO buildah bud --isolation chroot --quiet -f "$work/base/Containerfile" -t "$BASE" "$work/base" \
    >/dev/null || fail "could not make the base image $BASE"
fi

# 3. The build context: the checkout's files (committed or not, as git sees them) and, when setup.sh has
# built it, the llama-cpp-python wheel, which saves the build about 5 minutes of compiling.
mkdir -p "$work/context"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$repo" ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -C "$repo" -T - -cf - 2>/dev/null | tar -C "$work/context" -xf -
else
  tar -C "$repo" --exclude=./.venv --exclude=./.git -cf - . | tar -C "$work/context" -xf -
fi
cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
[ "$(uname -m)" = x86_64 ] || cmake_args="-DGGML_NATIVE=OFF"
wheel_dir="${VOXGATE_WHEEL_DIR:-$HOME/.cache/voxgate/wheels}/llama-$LLAMA_VERSION-$(echo "$cmake_args" | sha1sum | cut -c1-12)"
wheel=$(ls "$wheel_dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
  mkdir -p "$work/context/wheels"
  cp "$wheel" "$work/context/wheels/"
  step "using the prebuilt $(basename "$wheel")"
else
  step "no prebuilt llama-cpp-python wheel in $wheel_dir: the build compiles it (about 5 minutes)"
fi

# pip in the build trusts what this machine trusts: a TLS-inspecting proxy's CA is in the system bundle here,
# not in pip's own (certifi), and PyPI would fail with CERTIFICATE_VERIFY_FAILED.
ca_bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$ca_bundle" ]; then
  mkdir -p "$work/context/certs"
  cp "$ca_bundle" "$work/context/certs/ca.crt"
fi

# 4. Build (layers kept: an unchanged pyproject.toml reuses the dependencies' layer).
step "building $IMAGE"
previous=$($SUDO buildah images --quiet --noheading "$IMAGE" 2>/dev/null | head -n 1 || true)
if ! nice -n 10 $SUDO buildah bud --isolation chroot --layers --force-rm --format docker \
  -f "$work/context/Dockerfile" -t "$IMAGE" "$work/context" >"$work/build.log" 2>&1; then
  tail -n 40 "$work/build.log" >&2
  fail "buildah bud failed (the last 40 lines of its log are above)"
fi
current=$($SUDO buildah images --quiet --noheading "$IMAGE" | head -n 1)
# The image this tag named before is dropped, or every code change would keep one more on the disk; the
# layers the new one shares with it stay.
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  $SUDO buildah rmi "$previous" >/dev/null 2>&1 || true
fi
# So are the build stages' untagged final images of earlier builds (the newest, this build's, stays: the next
# build's cache).
$SUDO buildah images --filter dangling=true --quiet --noheading 2>/dev/null | tail -n +2 |
  xargs -r $SUDO buildah rmi >/dev/null 2>&1 || true
step "built $IMAGE ($($SUDO buildah images --format '{{.Size}}' "$IMAGE" | head -n 1))"

# 5. Run it on the host's network, on a free port, with an admin token (auth is on beyond loopback).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
ctr=$($SUDO buildah from --quiet "$IMAGE")
$SUDO buildah config --env VOXGATE_PORT="$port" --env VOXGATE_ADMIN_TOKEN="$token" "$ctr"
step "starting the container on port $port"
# Its own process group, so that the cleanup's signal reaches the server and not only buildah.
setsid $SUDO buildah run --isolation chroot --network host "$ctr" -- voxgate serve >"$work/serve.log" 2>&1 &
server_pid=$!
base_url="http://127.0.0.1:$port"
deadline=$((SECONDS + READY_S))
until python3 -c "import urllib.request; urllib.request.urlopen('$base_url/health/ready', timeout=3)" 2>/dev/null; do
  if ! [ -e "/proc/$server_pid" ]; then
    tail -n 40 "$work/serve.log" >&2
    fail "the container's server exited before it was ready (its last 40 log lines are above)"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    tail -n 40 "$work/serve.log" >&2
    fail "$base_url/health/ready did not answer 200 within ${READY_S} s (the server's last log lines are above)"
  fi
  sleep 1
done
step "ready: $base_url/health/ready answered 200"

# 6. A typed turn over /v1/voice, from the host's venv when there is one (gateway/client.py), else from the
# image's own Python.
if [ -x "$repo/.venv/bin/python" ]; then
  turn=("$repo/.venv/bin/python" "$repo/scripts/image_turn.py" --url "$base_url" --token "$token")
else
  turn=($SUDO buildah run --isolation chroot --network host "$ctr" -- python3 - --url "$base_url" --token "$token")
fi
if ! "${turn[@]}" <"$repo/scripts/image_turn.py"; then
  tail -n 40 "$work/serve.log" >&2
  fail "the typed turn over /v1/voice was not answered (the server's last log lines are above)"
fi

# 7. Stop it: SIGTERM is a graceful drain (no session is live now), after which the server exits 0.
if ! stop_server; then
  tail -n 20 "$work/serve.log" >&2
  fail "the container's server did not exit within 30 s of SIGTERM (its last log lines are above)"
fi
status=0
wait "$server_pid" || status=$?
server_pid=""
if [ "$status" != 0 ]; then
  tail -n 20 "$work/serve.log" >&2
  fail "the container's server exited with status $status after SIGTERM, not 0 (its last log lines are above)"
fi
step "stopped: SIGTERM drained the server and it exited 0"
step "image check passed in $((SECONDS - start)) s"
