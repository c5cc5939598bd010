"""Shared fixtures. Redis is always a real redis-server process, never a mock; the e2e stack runs real bot and
worker processes against a fake Bot API; the model tests opt into one torch thread (`pytestmark`)."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
import redis.asyncio

from bot.queue.client import RequestQueue
from bot.queue.config import QueueConfig
from bot.queue.connection import redis_server_binary
from bot.queue.protocol import Delivery, JokeRequest
from bot.queue.results import ResultReader
from tests.e2e_stack import BOT_TOKEN, BOT_USERNAME, Stack, make_stack
from tests.fake_bot_api import FakeBotAPI


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests run only with RUJOKES_SLOW=1 (as the marker's description in pyproject.toml says)."""
    if os.environ.get("RUJOKES_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set RUJOKES_SLOW=1 to run it")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


def _survive_full_files() -> None:
    """In the redis-server child, before exec: a write past RLIMIT_FSIZE fails instead of killing (SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class RedisServer:
    """A redis-server child process on a unix socket; restartable on the same socket and data dir."""

    def __init__(self, data_dir: Path, *, appendonly: bool, fsync: str = "always") -> None:
        """`fsync`: "always" (tests: even a SIGKILL loses nothing acknowledged) or "everysec" (deploy/redis.conf)."""
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.fsync = fsync
        # Unix socket paths must stay under ~107 bytes, pytest's tmp_path may not.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))
        self.socket_path = self._socket_dir / "redis.sock"
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket_path),
            "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.fsync,
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         preexec_fn=_survive_full_files)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.data_dir / 'redis.log').read_text()[-2000:]}")
            if self.socket_path.exists():
                client = redis.Redis(unix_socket_path=str(self.socket_path))
                try:
                    client.ping()
                    return self
                except (redis.BusyLoadingError, redis.ConnectionError):
                    pass
                finally:
                    client.close()
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self, *, kill: bool = False) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill() if kill else self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None

    def disk_full(self, full: bool = True) -> None:
        """While `full`, every write that would grow a file of this Redis fails (EFBIG, as ENOSPC would on a full
        disk): the AOF can take no more. Done with the process's RLIMIT_FSIZE, so no mount or root is needed."""
        limit = 1 if full else resource.RLIM_INFINITY
        resource.prlimit(self._process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def cleanup(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self._socket_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway Redis (no persistence) for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start extra Redis servers (AOF on by default) that a test may stop, kill and restart."""
    servers: list[RedisServer] = []

    def start(data_dir: Path | None = None, *, appendonly: bool = True, fsync: str = "always") -> RedisServer:
        server = RedisServer(data_dir or tmp_path / f"redis-{len(servers)}", appendonly=appendonly, fsync=fsync)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.cleanup()


@pytest.fixture
async def redis_client(redis_server: RedisServer):
    # No FLUSHDB: the session's Redis also serves the shared e2e stack, whose worker a flush would make look
    # dead for a heartbeat (its group and registry gone). Every test keeps to its own key_prefix instead.
    client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def queue_config(key_prefix: str) -> QueueConfig:
    """Short timings so reclaim and dead-lettering happen within a test's patience."""
    return QueueConfig(prefix=key_prefix, max_queue=50, max_deliveries=3, claim_idle_ms=100, stream_maxlen=1000)


@pytest.fixture
async def queue(redis_client, queue_config) -> RequestQueue:
    """The request queue with its consumer groups created."""
    queue = RequestQueue(redis_client, queue_config)
    await queue.ensure_groups()
    return queue


@pytest.fixture
async def reader(redis_client, queue_config) -> ResultReader:
    """The bot's side of the results stream, group created."""
    reader = ResultReader(redis_client, queue_config)
    await reader.ensure_group()
    return reader


@pytest.fixture
def make_request() -> Callable[..., JokeRequest]:
    def make(prompt: str = "штирлиц", **fields) -> JokeRequest:
        fields.setdefault("delivery", Delivery(chat_id=42, message_id=7, reply_to_message_id=6))
        fields.setdefault("deadline", time.time() + 30)
        return JokeRequest(prompt=prompt, **fields)

    return make


# -- torch threads -----------------------------------------------------------------------------------------


def _one_torch_thread() -> Iterator[None]:
    """Tiny matmuls on shared cores: one intra-op thread is ~10× faster than two fighting a busy box."""
    from tests.model_helpers import torch_threads  # torch: only for the tests that opt in

    with torch_threads(1):
        yield


# A module opts in with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`.
single_torch_thread = pytest.fixture(_one_torch_thread, name="single_torch_thread")
# For modules whose module-scoped fixtures (training runs) must run single-threaded too.
single_torch_thread_for_module = pytest.fixture(_one_torch_thread, scope="module", name="single_torch_thread_for_module")


# -- the e2e stack: fake Bot API + Redis + a real bot and worker ----------------------------------------------


@pytest.fixture(scope="session")
def stack(redis_server, tmp_path_factory) -> Iterator[Stack]:
    """One stack for every e2e test of the session; each test leaves it as it found it. Stopped at the end."""
    from tests.model_helpers import make_tiny_model_dir  # torch: only where a worker is needed

    models = tmp_path_factory.mktemp("models")
    nano, mini = models / "nano", models / "mini"
    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN, username=BOT_USERNAME)
    stack = make_stack(api, redis_server.url, f"e2e-{uuid.uuid4().hex[:6]}:", tmp_path_factory.mktemp("logs"),
                       nano, mini)
    try:
        stack.start_bot()  # first: its imports take longest, and the models are built meanwhile
        make_tiny_model_dir(nano, seed=1)
        make_tiny_model_dir(mini, seed=2)
        yield stack.start()
    finally:
        stack.close()
        api.stop()


# -- the fake Bot API in the test's own event loop, and aiogram talking to it (no bot process) ------------


@pytest.fixture
async def api():
    async with FakeBotAPI(username=BOT_USERNAME) as server:
        yield server


@pytest.fixture
async def bot(api):
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    bot = Bot(api.token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.base_url)))
    yield bot
    await bot.session.close()


@pytest.fixture
def compile_at_normal_priority(monkeypatch):
    """The background compile runs at nice 19 in production; on a machine loaded by other work (CI beside other
    jobs, the stress runs) that starves it for minutes. These tests are about what happens once it ends."""
    import rujokes_model.serving

    monkeypatch.setattr(rujokes_model.serving, "COMPILE_NICENESS", 0)
