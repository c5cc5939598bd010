"""Deployment settings, read from the environment or a `.env` file (names are case-insensitive).

This is the only place that reads the environment, and the one place every default is written:
everything else receives plain config objects built from here (`Settings.queue_config()`,
`WorkerConfig.from_settings`), whose own defaults are read from this class (`default_of`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.queue.protocol import DEFAULT_PREFIX, SamplingParams
from rujokes_model.config import SIZES, default_int8_sizes

if TYPE_CHECKING:
    from bot.queue.config import QueueConfig

Size = Literal[SIZES]
# A request that names no sampling gets the protocol's; the deployment's settings start from the same values.
_SAMPLING = SamplingParams()


def _model_source(size: str) -> Any:
    return Field("bundled", description=f"Source of the {size} model: 'bundled', a directory, or "
                                        "'hub:owner/repo@revision'.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # -- Redis and the queue --
    redis_url: str = Field(
        "", description="Redis URL (redis://, rediss://, unix://). Empty: start an embedded Redis with AOF on."
    )
    redis_data_dir: Path = Field(
        Path("data/redis"), description="Where the embedded Redis keeps its AOF and dump (when REDIS_URL is empty)."
    )
    redis_prefix: str = Field(DEFAULT_PREFIX, description="Prefix of every Redis key and stream name.")
    max_queue: int = Field(100, ge=1, description="Outstanding requests above which new ones are refused as busy.")
    max_deliveries: int = Field(
        3, ge=1, description="A request delivered more often than this is dead-lettered and answered 'failed'."
    )
    claim_idle_ms: int = Field(
        30_000, ge=100,
        description="A claimed request idle this long is taken to belong to a dead worker and reclaimed."
    )
    stream_maxlen: int = Field(10_000, ge=100, description="Approximate cap of each stream (a safety net).")
    result_dedupe_ttl_s: int = Field(86_400, ge=1, description="How long the bot remembers a handled request id.")
    request_timeout_s: float = Field(
        60.0, gt=0, description="Seconds from submission to the request's deadline; later it is answered 'expired'."
    )

    # -- the worker --
    worker_id: str = Field("", description="Stable consumer name of this worker. Empty: '<hostname>-<pid>'.")
    worker_batch_size: int = Field(
        16, ge=1, description="Most requests generated together in one batch. 16 keeps 16 concurrent jokes of the "
                              "default mini on 2 CPU cores within the latency target, where 8 made the second half "
                              "wait for seats (BENCHMARKS.md, 'Serving defaults').")
    worker_block_ms: int = Field(1000, ge=1, description="How long an idle worker waits on Redis per poll.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long to let the current batch finish before handing it back."
    )
    partial_interval_s: float = Field(0.7, ge=0, description="Least seconds between two partial results of a request.")
    heartbeat_ttl_s: float = Field(
        15.0, gt=0, description="Lifetime of a worker's heartbeat key; refreshed at a third of it."
    )
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads of a CPU worker (torch's ops and our int8/bf16 kernels); "
                             "0 keeps torch's default (one per core). 1 is fastest for nano and for lone requests, "
                             "more speed up mini's and small's batches; several workers on one machine share its "
                             "cores.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the worker runs the models.")
    compile_decode: bool = Field(
        True, description="Compile each model's decode step in the background (on a CPU ahead of time with "
                          "AOTInductor, on a GPU with torch.compile), from the worker's "
                          "first batch's end or 10 s after its start; requests are answered on the eager path "
                          "until it is ready, with the same tokens. "
                          "≈ 2-3× faster decoding on a CPU (BENCHMARKS.md). Needs a C++ compiler (g++) on CPU "
                          "workers; without one the worker logs it and stays eager. The compiled steps are cached "
                          "in TORCHINDUCTOR_CACHE_DIR (default ~/.cache/rujokes/inductor), so a restart loads "
                          "them instead of compiling.")
    cuda_graphs: bool = Field(
        True, description="On a GPU worker, replay each decode step from CUDA graphs (one per batch size bucket, "
                          "captured on first use, around the compiled step once it is ready): a step is then one "
                          "launch instead of hundreds. Same tokens as without. No effect on a CPU.")
    cpu_bf16_sizes: Annotated[list[Size], NoDecode] = Field(
        default_factory=list, description="Comma-separated sizes whose weights a CPU worker keeps in bf16 (our AVX2 "
                                          "kernel, fp32 arithmetic): half the memory traffic per step, lossless for "
                                          "the bf16 weights we ship. A size listed here leaves the int8 default. "
                                          "Empty: none.")
    cpu_int8_sizes: Annotated[list[Size], NoDecode] = Field(
        default_factory=default_int8_sizes,
        description="Comma-separated sizes whose weights a CPU worker rounds to int8 (one scale per row): a quarter "
                    "of fp32's traffic, ≈ 1.5-2× faster decoding than bf16 for mini and small, at a small measured "
                    "quality cost (BENCHMARKS.md). Default: mini,small (nano, bound by per-op overhead, not "
                    "bytes, gains nothing; its fp32 weights run on the kernels too). Empty: none. Needs "
                    "an x86-64 CPU with AVX2 and g++; without them the worker logs it and keeps fp32.")
    # One field per size of SIZES (model_sources reads them by name).
    model_nano: str = _model_source("nano")
    model_mini: str = _model_source("mini")
    model_small: str = _model_source("small")
    default_size: Size = Field(
        "mini", description="Size used for 'active' requests until an admin switches it: the best-quality size "
                            "shipped (small is not bundled yet). mini with the defaults above answers 16 "
                            "concurrent requests within the latency target on 2 cores (BENCHMARKS.md).")

    # -- the Telegram bot --
    bot_token: SecretStr = Field(
        SecretStr(""), description="Bot token from @BotFather (https://t.me/BotFather). Secret: never commit it."
    )
    callback_secret: SecretStr = Field(
        SecretStr(""), description="Key that signs button data and inline result ids (HMAC-SHA256, see SECURITY.md). "
                                   "Empty: derived from BOT_TOKEN, so a new token expires the buttons already sent; "
                                   "set one (e.g. `openssl rand -hex 32`) to keep them across a token change. Secret."
    )
    admin_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Comma-separated Telegram user ids of the bot's admins (/model, /ban, "
                                          "/broadcast, the bot's /stats…)."
    )
    telegram_api_base: str = Field(
        "", description="Bot API server base URL (a local telegram-bot-api or a test double). Empty: api.telegram.org."
    )
    telegram_timeout_s: float = Field(
        60.0, gt=0, description="Seconds the bot waits for one Bot API answer before it counts as a network error "
                                "(and is retried; a long poll waits this much longer than its own timeout, and a "
                                "new message twice this long: sent again, it could show twice)."
    )
    delivery_retry_s: float = Field(
        120.0, ge=0, description="How long the bot keeps trying to show a finished joke (or an apology) while "
                                 "Telegram answers 5xx or the connection fails, before it gives that one up."
    )
    webhook_url: str = Field(
        "", description="Public HTTPS URL Telegram posts updates to. Empty: long polling (the default)."
    )
    webhook_secret: str = Field(
        "", pattern=r"^[A-Za-z0-9_-]{0,256}$",
        description="X-Telegram-Bot-Api-Secret-Token checked on every webhook call (1-256 of A-Z a-z 0-9 _ -). "
                    "Empty: a random one per start.",
    )
    webhook_host: str = Field("0.0.0.0", description="Address the webhook HTTP server listens on.")
    webhook_port: int = Field(8080, ge=1, le=65535, description="Port the webhook HTTP server listens on.")
    webhook_path: str = Field("/telegram/webhook", description="Path of the webhook endpoint on that server.")
    rate_limit_per_minute: float = Field(
        6.0, gt=0, description="Jokes a user may ask for per minute, on average (token bucket refill rate)."
    )
    rate_limit_burst: int = Field(
        3, ge=1, description="Jokes a user may ask for at once before the rate limit applies."
    )
    group_messages_per_minute: int = Field(
        20, ge=1, description="Messages (and edits) the bot sends per group chat per minute; Telegram allows about 20."
    )
    messages_per_second: int = Field(
        25, ge=1, le=30, description="Messages (and edits) the bot sends per second in all chats together, across "
                                     "bot processes; Telegram allows about 30 (daily posts and broadcasts included)."
    )
    prompt_max_chars: int = Field(300, ge=10, le=3000, description="Longest joke opening accepted, in characters.")
    inline_wait_s: float = Field(
        2.5, gt=0, le=8, description="How long an inline query waits for finished variants before answering "
                                    "(Telegram drops answers after ~10 s)."
    )
    inline_variants: int = Field(3, ge=1, le=10, description="Jokes generated per inline query.")
    edit_interval_s: float = Field(
        1.5, ge=0, description="Least seconds between two streamed updates (draft or edit) of one joke."
    )
    result_grace_s: float = Field(
        10.0, ge=0, description="Seconds past a request's deadline after which the bot stops waiting and apologises."
    )
    bot_shutdown_timeout_s: float = Field(
        10.0, gt=0, description="Most seconds the bot takes to stop on SIGTERM; a shutdown stage that overruns its "
                                "share is cancelled (results it did not deliver are re-read on the next start)."
    )
    bot_lease_ttl_s: float = Field(
        2.0, ge=0.5, le=60, description="One bot process at a time serves Telegram, renewing a lease in Redis; "
                                        "others wait as hot standbys and take over this long after it dies."
    )
    standby_bots: int = Field(
        1, ge=0, le=4, description="Hot standby bot processes `rujokes run` starts beside the serving one: when it "
                                   "dies a standby serves within BOT_LEASE_TTL_S, and the dead one is started again "
                                   "as the next standby. Each costs about 180 MB of memory; 0: one bot, restarted."
    )
    max_new_tokens: int = Field(_SAMPLING.max_new_tokens, ge=1, le=2048,
                                description="Most tokens a joke may add to its opening, where the model's context "
                                            "leaves room for them. A joke that reaches them ends after its last "
                                            "whole sentence.")
    top_k: int = Field(_SAMPLING.top_k, ge=0, description="Sample from the k likeliest tokens (0: no top-k).")
    temperature: float = Field(_SAMPLING.temperature, ge=0, description="Sampling temperature (0: greedy).")

    # -- per-chat settings (/settings) --
    length_short_tokens: int = Field(
        60, ge=1, le=2048, description="MAX_NEW_TOKENS of a chat whose /settings say short jokes (normal: "
                                       "MAX_NEW_TOKENS).")
    length_long_tokens: int = Field(
        240, ge=1, le=2048, description="MAX_NEW_TOKENS of a chat whose /settings say long jokes.")
    calm_temperature: float = Field(
        0.7, ge=0, description="TEMPERATURE of a chat whose /settings say calm creativity (normal: TEMPERATURE).")
    calm_top_k: int = Field(5, ge=0, description="TOP_K of a chat whose /settings say calm creativity (normal: TOP_K).")
    wild_temperature: float = Field(1.3, ge=0, description="TEMPERATURE of a chat whose /settings say wild creativity.")
    wild_top_k: int = Field(50, ge=0, description="TOP_K of a chat whose /settings say wild creativity.")
    chat_sizes: Annotated[list[Size], NoDecode] = Field(
        default_factory=list, description="Comma-separated model sizes a chat may choose in /settings (in a group, "
                                          "its admins choose); a chat's size no live worker has falls back to the "
                                          "active one. Empty: /settings offers no size, every chat uses /model's.")
    chat_admin_cache_s: int = Field(
        60, ge=1, description="How long the bot trusts Telegram's answer (getChatMember) on whether a user is a "
                              "group's admin, for /settings.")

    # -- the daily joke (/daily) --
    daily_timezone: str = Field(
        "Europe/Moscow", description="Time zone of a /daily subscription that names none (an IANA name: "
                                     "Europe/Berlin, Asia/Almaty, UTC).")
    daily_check_interval_s: float = Field(
        5.0, gt=0, le=60, description="How often each bot process looks for daily jokes that are due (a post "
                                      "comes at most this late).")

    # -- access and admin tools --
    access: Literal["open", "allowlist"] = Field(
        "open", description="open: everyone may ask for jokes (except users an admin banned with /ban). allowlist: "
                            "only the bot's admins and the users and chats they /allow.")
    broadcast_per_second: float = Field(
        10.0, gt=0, le=30, description="Messages a second a /broadcast sends (Telegram allows about 30 a second "
                                       "in all; the rest is left for jokes).")

    # -- metrics and health --
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the worker's /metrics and /healthz server. Empty: no server."
    )
    bot_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the bot's /metrics and /healthz server. Empty: no server."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the /metrics and /healthz servers listen on.")
    worker_health_stale_s: float = Field(
        60.0, gt=0, description="A worker whose claim loop or Redis has been silent this long (a batch included) "
                                "answers /healthz with 503."
    )

    # -- logging --
    log_format: Literal["text", "json"] = Field("text", description="Log lines as plain text or one JSON object each.")
    log_level: str = Field("INFO", description="Python logging level name.")

    @field_validator("admin_ids", "cpu_bf16_sizes", "cpu_int8_sizes", "chat_sizes", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        # "1, 2,3" or "mini,small" from the environment; a list when built in code
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("daily_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Moscow") from None
        return value

    @field_validator("worker_metrics_port", "bot_metrics_port", mode="before")
    @classmethod
    def _empty_port_is_none(cls, value: object) -> object:
        # `WORKER_METRICS_PORT=` as copied from .env.example means "no server", not an error
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _one_weight_format_a_size(self) -> "Settings":
        if "cpu_int8_sizes" not in self.model_fields_set:  # the default yields to sizes asked for in bf16
            self.cpu_int8_sizes = [size for size in self.cpu_int8_sizes if size not in self.cpu_bf16_sizes]
        both = sorted(set(self.cpu_bf16_sizes) & set(self.cpu_int8_sizes))
        if both:
            raise ValueError(f"{', '.join(both)}: listed in both CPU_BF16_SIZES and CPU_INT8_SIZES; choose one")
        return self

    def secret_values(self) -> list[str]:
        """What the logs must never show (bot/common/logs.py redacts it): the token, its secret half,
        the signing and webhook secrets, the Redis password."""
        from urllib.parse import urlsplit

        token = self.bot_token.get_secret_value()
        try:
            redis_password = urlsplit(self.redis_url).password or ""
        except ValueError:  # a malformed URL: Redis itself will say so
            redis_password = ""
        return [value for value in (token, token.partition(":")[2], self.callback_secret.get_secret_value(),
                                    self.webhook_secret, redis_password) if value]

    def model_sources(self) -> dict[str, str]:
        return {size: getattr(self, f"model_{size}") for size in SIZES}

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(top_k=self.top_k, temperature=self.temperature, max_new_tokens=self.max_new_tokens)

    def queue_config(self) -> QueueConfig:
        from bot.queue.config import QueueConfig  # here: QueueConfig reads its defaults from this class

        return QueueConfig(
            prefix=self.redis_prefix,
            max_queue=self.max_queue,
            max_deliveries=self.max_deliveries,
            claim_idle_ms=self.claim_idle_ms,
            stream_maxlen=self.stream_maxlen,
            dedupe_ttl_s=self.result_dedupe_ttl_s,
        )


def default_of(name: str) -> Any:
    """The default of setting `name`: what a config object built from Settings starts from."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def load_settings(program: str) -> Settings:
    """Settings from the environment / `.env`; invalid ones end the program with exit code 2 and the reason."""
    import sys

    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as error:
        print(f"{program}: invalid settings (see .env.example):\n{error}", file=sys.stderr)
        sys.exit(2)
