"""Every user-facing string of the bot, in one gettext catalogue per language (locales/{ru,en}/LC_MESSAGES/bot.po).

The catalogues are monolingual: a msgid is the name the code uses (`t.PLACEHOLDER`), its msgstr the text,
so both catalogues are complete and a test holds them to the same keys and placeholders. They are read
with Babel's .po parser at import; nothing is compiled or generated.

The language follows the user's Telegram `language_code`: Russian for ru/uk/be/kk and for an unknown one,
English for every other. The jokes themselves stay Russian (the models know nothing else); an English
speaker is told so once (bot/telegram/notices.py).

Texts are plain: they are sent without parse_mode, so nothing here (and nothing a user or the model
wrote) is ever parsed as HTML or Markdown.
"""
from __future__ import annotations

from pathlib import Path

from babel.messages.pofile import read_po

LANGUAGES = ("ru", "en")
DEFAULT_LANGUAGE = "ru"
# Telegram's language codes whose speakers read Russian more easily than English.
RUSSIAN_READERS = frozenset({"ru", "uk", "be", "kk"})
LOCALES = Path(__file__).with_name("locales")

# The command menu (setMyCommands), in menu order; descriptions are COMMAND_<name> / ADMIN_COMMAND_<name>.
COMMAND_NAMES = ("joke", "daily", "settings", "stats", "help", "start")
# Commands only ADMIN_IDS may use (/stats is everyone's: admins see the bot's statistics).
ADMIN_COMMAND_NAMES = ("model", "ban", "unban", "allow", "disallow", "broadcast", "audit")


def language_for(language_code: str | None) -> str:
    """"ru" or "en" for a Telegram `language_code` ("ru", "en-US", None)."""
    base = (language_code or "").split("-")[0].strip().lower()
    return "ru" if not base or base in RUSSIAN_READERS else "en"


class Texts:
    """One language's texts: `t.PLACEHOLDER`, `t.command("joke")`, `t.setting_value("length", "short")`."""

    def __init__(self, language: str, messages: dict[str, str]) -> None:
        self.language = language
        self._messages = messages

    @classmethod
    def load(cls, language: str) -> Texts:
        with (LOCALES / language / "LC_MESSAGES" / "bot.po").open("rb") as file:
            catalog = read_po(file)
        return cls(language, {message.id: message.string for message in catalog if message.id})

    def __getattr__(self, key: str) -> str:
        try:
            return self.__dict__["_messages"][key]
        except KeyError:
            raise AttributeError(f"no text {key!r} in the {self.__dict__.get('language')} catalogue") from None

    def keys(self) -> set[str]:
        return set(self._messages)

    def command(self, name: str) -> str:
        return self._messages.get(f"COMMAND_{name}") or self._messages[f"ADMIN_COMMAND_{name}"]

    def setting_name(self, field: str) -> str:
        return self._messages[f"SETTING_NAME_{field}"]

    def setting_value(self, field: str, value: str) -> str:
        """The label of a setting's value; a value without one (a size: nano, mini, small) shows as itself."""
        return self._messages.get(f"SETTING_VALUE_{field}_{value}", value)

    def seconds(self, value: float) -> str:
        return self.SECONDS.format(value=f"{value:.1f}")


RU = Texts.load("ru")
EN = Texts.load("en")
_BY_LANGUAGE = {"ru": RU, "en": EN}


def get(language: str | None) -> Texts:
    """The texts of a language this module names ("ru", "en"); the default language for anything else."""
    return _BY_LANGUAGE.get(language or DEFAULT_LANGUAGE, RU)


def for_user(language_code: str | None) -> Texts:
    return _BY_LANGUAGE[language_for(language_code)]
