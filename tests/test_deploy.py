"""deploy/: the compose file, Dockerfiles, systemd units and redis.conf, checked without Docker or systemd.

Static checks pin what an operator would otherwise find out in production (a typo'd variable, a
command that is not installed, a Redis port open to the world); the last test runs the command the
worker unit runs, as a plain process, with the environment the unit and compose give it.
"""
from __future__ import annotations

import asyncio
import configparser
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import redis.asyncio
import yaml

from bot.common.settings import Settings
from bot.queue.client import RequestQueue
from bot.queue.config import QueueConfig
from tests.model_helpers import make_tiny_model_dir
from tests.worker_process import worker_env

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = {"rujokes-bot@.service": "rujokes-bot", "rujokes-worker@.service": "rujokes-worker"}
APP_SERVICES = ("bot", "worker", "worker-gpu")
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")

# Used by compose alone (to build REDIS_URL and start Redis): documented for operators instead.
COMPOSE_ONLY = {"REDIS_PASSWORD"}
# Read by libraries, not by rujokes.
LIBRARY_VARIABLES = {"HF_HOME", "CUDA_VISIBLE_DEVICES", "TORCHINDUCTOR_CACHE_DIR"}


# -- helpers ------------------------------------------------------------------------------------


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def env_example_names() -> set[str]:
    """Names in .env.example, set or commented out (`# NAME=`); empty while the file does not exist."""
    path = ROOT / ".env.example"
    if not path.exists():
        return set()
    return set(re.findall(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.MULTILINE))


def deploy_readme() -> str:
    return (DEPLOY / "README.md").read_text()


def known_variables() -> set[str]:
    settings = {name.upper() for name in Settings.model_fields}
    return settings | env_example_names() | COMPOSE_ONLY | LIBRARY_VARIABLES


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def seconds(duration: str) -> float:
    """Compose durations as used here: '45s', '2m', '1m30s'."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"unexpected duration {duration!r}"
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


class _RepeatedKeys(dict):
    """configparser's dict_type that keeps every value of a repeated key (systemd allows repeats).

    While reading, configparser stores each value as a one-item list; extending instead of
    replacing leaves all of them, joined by newlines, in the final value.
    """

    def __setitem__(self, key, value):
        if isinstance(value, list) and isinstance(self.get(key), list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, dict_type=_RepeatedKeys)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text(), source=name)
    return parser


def values(unit: configparser.ConfigParser, section: str, key: str) -> list[str]:
    return unit.get(section, key, fallback="").splitlines()


def exec_start(unit: configparser.ConfigParser) -> tuple[dict[str, str], str]:
    """ExecStart as (variables assigned through `env NAME=value`, the program)."""
    words = shlex.split(unit.get("Service", "ExecStart"))
    assigned: dict[str, str] = {}
    if Path(words[0]).name == "env":
        words = words[1:]
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            name, _, value = words.pop(0).partition("=")
            assigned[name] = value
    return assigned, words[0]


def dockerfile_images(text: str) -> list[str]:
    """The FROM images, with `ARG NAME=default` values declared before them filled in."""
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.MULTILINE))
    images = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    return [re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), image) for image in images]


# -- docker-compose.yml -------------------------------------------------------------------------


def test_every_app_service_runs_a_console_script_declared_in_pyproject():
    services = compose()["services"]
    scripts = console_scripts()
    assert set(APP_SERVICES) <= set(services)
    for name in APP_SERVICES:
        command = services[name]["command"]
        program = command[0] if isinstance(command, list) else shlex.split(command)[0]
        assert program in scripts, f"{name}: {program!r} is not in [project.scripts]"
    assert services["bot"]["command"] == ["rujokes-bot"]
    assert services["worker"]["command"] == services["worker-gpu"]["command"] == ["rujokes-worker"]


def test_compose_runs_the_bot_with_a_hot_standby():
    assert compose()["services"]["bot"]["deploy"]["replicas"] == 2


def test_every_variable_compose_uses_or_sets_is_a_setting_or_documented():
    text = (DEPLOY / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    set_in_services = {name for service in compose()["services"].values()
                       for name in (service.get("environment") or {})}
    unknown = (interpolated | set_in_services) - known_variables()
    assert not unknown, f"not Settings fields, nor in .env.example, nor documented: {sorted(unknown)}"
    assert "REDIS_PASSWORD" in interpolated


def test_variables_outside_settings_are_explained_in_the_deploy_readme():
    readme = deploy_readme()
    example = env_example_names()
    for name in sorted(COMPOSE_ONLY):
        assert name in readme or name in example, f"{name} is documented nowhere"


# -- the settings table in deploy/README.md -----------------------------------------------------


def settings_table() -> str:
    return deploy_readme().split("<!-- settings-table:start -->", 1)[1].split("<!-- settings-table:end -->", 1)[0]


def test_the_readme_settings_table_is_what_the_generator_writes():
    check = subprocess.run([sys.executable, "scripts/gen_config_table.py", "--check"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_the_readme_settings_table_has_a_row_per_setting_with_its_default():
    rows = {row.split("|")[1].strip(): row for row in settings_table().splitlines() if row.startswith("| `")}
    assert set(rows) == {f"`{name.upper()}`" for name in Settings.model_fields}
    assert "| `MAX_QUEUE` | `100` |" in rows["`MAX_QUEUE`"]
    assert "| `BOT_METRICS_PORT` | *(empty)* |" in rows["`BOT_METRICS_PORT`"]


def test_redis_publishes_no_port_and_requires_the_password():
    redis_service = compose()["services"]["redis"]
    assert redis_service["image"].split(":")[0] == "redis" and redis_service["image"].endswith(":7")
    assert "ports" not in redis_service and redis_service.get("network_mode") != "host"
    command = " ".join(redis_service["command"])
    assert "/usr/local/etc/redis/redis.conf" in command and "--requirepass ${REDIS_PASSWORD" in command
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis_service["volumes"]
    assert any(volume.endswith(":/data") for volume in redis_service["volumes"])
    healthcheck = " ".join(redis_service["healthcheck"]["test"])
    assert "redis-cli -a" in healthcheck and "ping" in healthcheck


def test_app_services_reach_redis_with_the_password_after_it_is_healthy():
    services = compose()["services"]
    for name in APP_SERVICES:
        service = services[name]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD[^}]*\}@redis:6379/0", service["environment"]["REDIS_URL"])
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["env_file"] == ".env"
        assert service["restart"] == "unless-stopped"
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
        assert "ports" not in service  # metrics are scraped on the compose network


def test_healthchecks_probe_the_metrics_port_each_service_is_given():
    services = compose()["services"]
    for name, variable in [("bot", "BOT_METRICS_PORT"), ("worker", "WORKER_METRICS_PORT"),
                           ("worker-gpu", "WORKER_METRICS_PORT")]:
        port = services[name]["environment"][variable]
        assert f"127.0.0.1:{port}/healthz" in " ".join(services[name]["healthcheck"]["test"])


def test_workers_have_no_fixed_id_so_they_can_be_scaled():
    services = compose()["services"]
    for name in ("worker", "worker-gpu"):
        assert "WORKER_ID" not in services[name]["environment"]
        assert "container_name" not in services[name]


def test_the_gpu_worker_is_a_profile_that_reserves_an_nvidia_gpu():
    service = compose()["services"]["worker-gpu"]
    assert service["profiles"] == ["gpu"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert service["environment"]["DEVICE"] == "cuda"
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "profiles" not in compose()["services"]["worker"]


def test_compose_builds_from_the_repository_root_with_existing_dockerfiles():
    for name in APP_SERVICES:
        build = compose()["services"][name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file()


def test_stop_grace_periods_outlast_the_workers_shutdown_grace():
    grace = Settings.model_fields["shutdown_grace_s"].default
    for name in APP_SERVICES:
        assert seconds(compose()["services"][name]["stop_grace_period"]) > grace


def test_hub_downloads_are_cached_on_a_volume_at_the_images_hf_home():
    hf_home = re.search(r"HF_HOME=(\S+)", (DEPLOY / "Dockerfile").read_text())[1]
    for name in ("worker", "worker-gpu"):
        assert f"hf-cache:{hf_home}" in compose()["services"][name]["volumes"]
    assert {"redis-data", "hf-cache"} <= set(compose()["volumes"])


# -- redis.conf ---------------------------------------------------------------------------------


def redis_directives() -> dict[str, str]:
    lines = [line.split(None, 1) for line in (DEPLOY / "redis.conf").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {parts[0].lower(): parts[1].strip() if len(parts) > 1 else "" for parts in lines}


def test_redis_conf_turns_the_append_only_file_on():
    directives = redis_directives()
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"


def test_redis_conf_never_evicts_queue_entries():
    directives = redis_directives()
    assert directives["maxmemory-policy"] == "noeviction"
    assert re.fullmatch(r"\d+(mb|gb)", directives["maxmemory"])


def test_redis_conf_commits_no_password_and_keeps_protected_mode():
    directives = redis_directives()
    assert "requirepass" not in directives  # the password comes from .env, never from the repository
    assert directives["protected-mode"] == "yes"


# -- systemd units ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_parses_with_the_required_keys(name):
    unit = read_unit(name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["User"] == "rujokes"
    assert "/etc/rujokes/rujokes.env" in values(unit, "Service", "EnvironmentFile")
    assert (service["Restart"], service["KillSignal"]) == ("always", "SIGTERM")
    assert (service["NoNewPrivileges"], service["ProtectSystem"], service["PrivateTmp"]) == ("yes", "strict", "yes")
    assert service["ReadWritePaths"] == service["WorkingDirectory"] == "/var/lib/rujokes"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_its_console_script_from_the_virtualenv(name):
    _, program = exec_start(read_unit(name))
    assert Path(program).name == UNITS[name] and UNITS[name] in console_scripts()
    assert Path(program).parent == Path("/opt/rujokes/venv/bin")


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_stop_timeout_outlasts_the_shutdown_grace(name):
    assert float(read_unit(name)["Service"]["TimeoutStopSec"]) > Settings.model_fields["shutdown_grace_s"].default


@pytest.mark.parametrize("name", sorted(UNITS))
def test_every_variable_a_unit_sets_or_uses_is_known(name):
    unit = read_unit(name)
    assigned, _ = exec_start(unit)
    set_by_environment = {entry.split("=", 1)[0] for line in values(unit, "Service", "Environment")
                          for entry in shlex.split(line)}
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", unit.get("Service", "ExecStart")))
    unknown = (set(assigned) | set_by_environment | used) - known_variables()
    assert not unknown, f"{name}: unknown variables {sorted(unknown)}"


def test_bot_template_runs_a_standby_beside_the_active_bot_each_with_its_own_overrides():
    unit = read_unit("rujokes-bot@.service")
    assert "-/etc/rujokes/bot-%i.env" in values(unit, "Service", "EnvironmentFile")
    assert "rujokes-bot@1 rujokes-bot@2" in (DEPLOY / "systemd" / "rujokes-bot@.service").read_text()
    assert "rujokes-bot@1 rujokes-bot@2" in deploy_readme()


def test_worker_template_gives_each_instance_a_stable_id_and_its_own_overrides():
    unit = read_unit("rujokes-worker@.service")
    assigned, _ = exec_start(unit)
    assert assigned["WORKER_ID"] == "%H-%i"
    assert "-/etc/rujokes/worker-%i.env" in values(unit, "Service", "EnvironmentFile")


# -- Dockerfiles --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_as_a_non_root_user(name):
    users = re.findall(r"^USER\s+(\S+)", (DEPLOY / name).read_text(), flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0", "0:0"}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_names_no_registry_host(name):
    text = (DEPLOY / name).read_text()
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"https?://|--(extra-)?index-url|--trusted-host|--find-links", instructions)
    for image in dockerfile_images(text):
        first = image.split("/")[0]
        assert "/" not in image or not re.search(r"[.:]|^localhost$", first), f"{image} names a registry host"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_the_pinned_torch_then_the_project(name):
    text = (DEPLOY / name).read_text()
    assert 'ARG TORCH_SPEC="torch==2.13.0"' in text
    torch_at, project_at = text.index('pip install $TORCH_PIP_ARGS "$TORCH_SPEC"'), text.index("pip install .")
    assert torch_at < project_at


def test_the_cpu_image_is_python_311_slim_and_the_gpu_image_a_cuda_runtime():
    assert dockerfile_images((DEPLOY / "Dockerfile").read_text()) == ["python:3.11-slim"]
    [cuda] = dockerfile_images((DEPLOY / "Dockerfile.cuda").read_text())
    assert cuda.startswith("nvidia/cuda:") and "-runtime-" in cuda
    assert "python3.11" in (DEPLOY / "Dockerfile.cuda").read_text()


# -- the worker unit's command, run as a plain process ------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-nano"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return 0  # refused (not listening yet) or an error status


async def test_worker_unit_command_reaches_a_heartbeat_serves_healthz_and_exits_0_on_sigterm(
    redis_server, key_prefix, model_dir, tmp_path
):
    unit_assigned, program = exec_start(read_unit("rujokes-worker@.service"))
    worker_id = unit_assigned["WORKER_ID"].replace("%H", socket.gethostname()).replace("%i", "1")
    compose_env = {k: v for k, v in compose()["services"]["worker"]["environment"].items() if k != "REDIS_URL"}
    port = free_port()
    env = worker_env(redis_server.url, key_prefix, model_dir,
                     **{**compose_env, "WORKER_ID": worker_id, "WORKER_METRICS_PORT": str(port),
                        "HF_HOME": str(tmp_path / "hf")})
    executable = Path(sys.executable).parent / Path(program).name  # the venv's, as /opt/rujokes/venv/bin is
    log_path = tmp_path / "worker.log"
    client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
    queue = RequestQueue(client, QueueConfig(prefix=key_prefix))
    with open(log_path, "ab") as log:
        worker = await asyncio.create_subprocess_exec(str(executable), env=env, stdout=log, stderr=log, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine: imports, model load, kernel build
        alive = healthy = False
        while time.monotonic() < deadline and not (alive and healthy):
            await asyncio.sleep(0.2)
            assert worker.returncode is None, log_path.read_text()[-3000:]
            alive = [w.worker_id for w in await queue.live_workers()] == [worker_id]
            healthy = alive and await asyncio.to_thread(get_status, f"http://127.0.0.1:{port}/healthz") == 200
        assert alive and healthy, log_path.read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            assert "rujokes_queue_length" in response.read().decode()

        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0, log_path.read_text()[-3000:]
        assert await queue.live_workers() == []
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        await client.aclose()
