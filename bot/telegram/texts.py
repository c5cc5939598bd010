"""Every user-facing string of the bot, in one gettext catalogue per language (locales/{ru,en}/LC_MESSAGES/bot.po).

The catalogues are monolingual: a msgid is the name the code uses (`t.PLACEHOLDER`), its msgstr the text,
so both catalogues are complete and a test holds them to the same keys and placeholders. A text around a
count has gettext's plural forms (msgid_plural, msgstr[N], the header's Plural-Forms: three in Russian, "1
чату, 2 чатам, 5 чатам"), read with `t.plural(KEY, n)`. They are read with Babel's .po parser at import;
nothing is compiled or generated.

The language follows the user's Telegram `language_code`: Russian for ru/uk/be/kk and for an unknown one,
English for every other. The jokes themselves stay Russian (the models know nothing else); an English
speaker is told so once (bot/telegram/notices.py).

Texts are plain: they are sent without parse_mode, so nothing here (and nothing a user or the model
wrote) is ever parsed as HTML or Markdown.
"""
from __future__ import annotations

import gettext
from collections.abc import Callable
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

    def __init__(self, language: str, messages: dict[str, str | tuple[str, ...]],
                 plural_form: Callable[[int], int]) -> None:
        self.language = language
        self._messages = messages
        self._plural_form = plural_form

    @classmethod
    def load(cls, language: str) -> Texts:
        with (LOCALES / language / "LC_MESSAGES" / "bot.po").open("rb") as file:
            catalog = read_po(file)
        messages = {(message.id[0] if message.pluralizable else message.id): message.string
                    for message in catalog if message.id}
        # The header's C expression, evaluated as the standard library's gettext evaluates it.
        return cls(language, messages, gettext.c2py(catalog.plural_expr))

    def __getattr__(self, key: str) -> str:
        try:
            text = self.__dict__["_messages"][key]
        except KeyError:
            raise AttributeError(f"no text {key!r} in the {self.__dict__.get('language')} catalogue") from None
        if isinstance(text, tuple):
            raise AttributeError(f"{key} is a text around a count: t.plural({key!r}, n)")
        return text

    def plural(self, key: str, n: int, **fields) -> str:
        """The form of a text around a count for the count `n` (1 чату, 2 чатам, 5 чатам), filled with `fields`."""
        forms = self._messages[key]
        if not isinstance(forms, tuple):
            raise TypeError(f"{key} has no plural forms")
        form = forms[min(self._plural_form(abs(n)), len(forms) - 1)]
        return form.format(**fields) if fields else form

    def forms(self, key: str) -> tuple[str, ...]:
        """Every form of a text: one, or its plural forms."""
        text = self._messages[key]
        return text if isinstance(text, tuple) else (text,)

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
