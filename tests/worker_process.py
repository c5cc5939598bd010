"""Run `rujokes-worker` as a real child process (the console script the deployment runs)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def worker_env(redis_url: str, prefix: str, model_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MODEL_", "WORKER_"))}
    env.update(REDIS_URL=redis_url, REDIS_PREFIX=prefix, MODEL_NANO=str(model_dir), MODEL_MINI="none",
               MODEL_SMALL="none", DEVICE="cpu", CLAIM_IDLE_MS="1500", WORKER_BLOCK_MS="200",
               LOG_FORMAT="json", TORCH_THREADS="1",
               # The compiled step has its own tests (test_engine, test_model_serving) and the bundled-weights
               # journey serves with every default; the tiny models here would only spend the cores on it.
               COMPILE_DECODE="false")
    env.update(extra)
    return env


def start_console_script(name: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """The installed console script `name` (from this venv) as a child process logging to `log_path`."""
    executable = shutil.which(name, path=str(Path(sys.executable).parent)) or name
    log = open(log_path, "ab")
    # cwd=/ so that no developer's .env leaks into the test
    return subprocess.Popen([executable], env=env, stdout=log, stderr=subprocess.STDOUT, cwd="/")


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return start_console_script("rujokes-worker", env, log_path)
