"""The deployment files say what the code does: docker-compose.yml parses, has the services docs/deploy.md
describes, and every VOXGATE_* variable it or the Dockerfile sets is a setting the gateway reads.

The image itself is built and run by scripts/image_check.sh (.ci/run, after the tests): too slow for here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from engines.registry import flat_option_names
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# The Dockerfile's logical lines: continuations joined, comments dropped.
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def _is_setting(variable: str) -> bool:
    """Whether ``VOXGATE_<NAME>`` is read by Settings: a field, an engine option's flat name, or a nested key."""
    name = variable.removeprefix("VOXGATE_").lower()
    top = name.split("__", 1)[0]
    return top in Settings.model_fields or name in flat_option_names()


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=value form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_has_the_services_with_health_checks_and_volumes() -> None:
    services = COMPOSE["services"]
    assert {"gateway", "models", "vllm", "postgres", "redis"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert "image" in service, f"{name} names no image"
    for name in ("gateway", "models", "vllm", "postgres", "redis"):
        for volume in services[name].get("volumes", []):
            assert volume.split(":", 1)[0] in COMPOSE["volumes"], f"{name}: undeclared volume {volume}"
    assert services["gateway"]["volumes"], "the gateway keeps its data on a volume"
    # The gateway's own image is built from this repository; the model node is the same image.
    assert services["gateway"]["build"] == "." and services["models"]["image"] == services["gateway"]["image"]
    assert services["vllm"]["image"].startswith("vllm/vllm-openai")
    gpu = services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_compose_variables_are_real_settings() -> None:
    seen = set()
    for name, service in COMPOSE["services"].items():
        for variable in _environment(service):
            if variable.startswith("VOXGATE_"):
                seen.add(variable)
                assert _is_setting(variable), f"{name}: {variable} is not a voxgate setting"
    # What the gateway is wired to: the database, Redis, vLLM and the model node.
    for variable in (
        "VOXGATE_DATABASE_URL",
        "VOXGATE_REDIS_URL",
        "VOXGATE_MEDIA_REDIS_URL",
        "VOXGATE_LLM_BASE_URL",
        "VOXGATE_STT_BASE_URL",
        "VOXGATE_TTS_BASE_URL",
        "VOXGATE_ADMIN_TOKEN",
    ):
        assert variable in seen, f"the compose file does not set {variable}"


def test_compose_wiring_points_at_its_own_services() -> None:
    services = COMPOSE["services"]
    gateway = _environment(services["gateway"])
    hosts = {
        "VOXGATE_DATABASE_URL": "postgres",
        "VOXGATE_REDIS_URL": "redis",
        "VOXGATE_MEDIA_REDIS_URL": "redis",
        "VOXGATE_LLM_BASE_URL": "vllm",
        "VOXGATE_STT_BASE_URL": "models",
        "VOXGATE_TTS_BASE_URL": "models",
    }
    for variable, host in hosts.items():
        assert re.search(rf"[/@]{host}:\d+", gateway[variable]), (
            f"{variable}={gateway[variable]} is not {host}"
        )
        assert host in services
    # The settings accept the values (engine names and options are validated when Settings is built).
    built = {}
    for name in ("gateway", "models"):
        env = _environment(services[name])
        values = {k.removeprefix("VOXGATE_").lower(): v for k, v in env.items() if "${" not in v}
        built[name] = Settings(**values)
    assert built["gateway"].engine_name("llm") == "openai" and built["gateway"].engine_name("stt") == "openai"
    assert built["models"].engine_name("stt") == "whisper"  # the node runs the models itself


def test_dockerfile_variables_are_real_settings() -> None:
    env_lines = [line for line in INSTRUCTIONS if line.startswith("ENV ")]
    variables = {match for line in env_lines for match in re.findall(r"\b(VOXGATE_[A-Z0-9_]+)=", line)}
    assert {"VOXGATE_HOST", "VOXGATE_PORT", "VOXGATE_DATA_DIR"} <= variables
    for variable in variables:
        assert _is_setting(variable), f"the Dockerfile sets {variable}, which is not a voxgate setting"


def test_dockerfile_runtime_stage() -> None:
    stages = [i for i, line in enumerate(INSTRUCTIONS) if line.startswith("FROM ")]
    assert len(stages) >= 2, "build stages and a runtime stage"
    runtime = INSTRUCTIONS[stages[-1] :]
    assert runtime[0] == "FROM ${BASE_IMAGE}"
    assert any(re.match(r"ARG BASE_IMAGE=debian:bookworm-slim$", line) for line in INSTRUCTIONS)
    user = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert any(line.startswith("VOLUME") and "/data" in line for line in runtime)
    assert any(line.startswith("HEALTHCHECK") and "/health/ready" in line for line in runtime)
    assert any(line.startswith("EXPOSE 8000") for line in runtime)
    assert any(line.startswith("CMD") and "serve" in line for line in runtime)
    # No compilers and no test extras in what ships.
    installs = " ".join(line for line in runtime if "apt-get install" in line)
    for package in ("build-essential", "cmake", "gcc", "python3-dev"):
        assert package not in installs
    assert "espeak-ng" in installs
    assert not any("[test" in line or ",test" in line for line in INSTRUCTIONS)


def test_dockerignore_keeps_out_data_and_the_venv() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data", "test-artifacts", "bench/results", "**/__pycache__"} <= patterns
    assert "wheels" not in patterns and "certs" not in patterns  # the CI check's inputs to the build


def test_ci_runs_the_tests_then_the_image_check() -> None:
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "bash scripts/test.sh" in commands and "bash scripts/image_check.sh" in commands
    assert commands.index("bash scripts/test.sh") < commands.index("bash scripts/image_check.sh")
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "image_check.sh")], check=True)


def test_image_turn_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image_turn.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--token" in result.stdout
