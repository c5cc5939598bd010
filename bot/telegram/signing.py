"""Signed button data and inline result ids: what a button says is only believed if the bot wrote it.

Telegram hands back callback_data and result ids as the client sends them, and a modified client can
send anything. So every one that carries authority (which joke to repeat or vote on, which prompt to
write) ends in a MAC: HMAC-SHA256 over the data and its *scope*, the place the bot put the button (one
chat, or inline messages). Data copied to another chat, a guessed joke id, an edited action and old
unsigned buttons all fail the check alike.

The key is CALLBACK_SECRET, or (empty) one derived from the bot token, so that it works with no
config; buttons already sent stop working when the key changes (a new token, a new secret).
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from bot.common.settings import Settings

SEPARATOR = ":"
# 12 bytes of the HMAC, 16 base64url characters: a forgery takes ~2^96 guesses, and the longest signed
# data ("j:down:" + a 32-hex joke id + ":" + MAC = 56 bytes) stays under Telegram's 64-byte limit.
MAC_BYTES = 12
INLINE_SCOPE = "inline"
_DERIVATION_LABEL = b"rujokes callback data v1"


def chat_scope(chat_id: int) -> str:
    return f"chat:{chat_id}"


class Signer:
    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a signing key must not be empty")
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        secret = settings.callback_secret.get_secret_value()
        if secret:
            return cls(secret.encode())
        token = settings.bot_token.get_secret_value().encode()
        return cls(hmac.new(token, _DERIVATION_LABEL, hashlib.sha256).digest())

    def _mac(self, body: str, scope: str) -> bytes:
        message = f"{scope}\n{body}".encode("utf-8", "surrogatepass")  # any str a client sent, lone surrogates too
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=")

    def sign(self, body: str, scope: str) -> str:
        return f"{body}{SEPARATOR}{self._mac(body, scope).decode()}"

    def verified(self, data: str, scope: str | None) -> str | None:
        """The body of `data` when its MAC matches `scope`, else None (compared in constant time)."""
        body, separator, mac = data.rpartition(SEPARATOR)
        if not separator or scope is None:
            return None
        if hmac.compare_digest(mac.encode("utf-8", "surrogatepass"), self._mac(body, scope)):
            return body
        return None
