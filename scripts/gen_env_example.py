"""Write `.env.example` from `bot.common.settings.Settings`: every setting, grouped, with its description
and default, so the example cannot drift from the code (tests/test_bot_env_example.py checks it).

    python scripts/gen_env_example.py           # rewrite .env.example
    python scripts/gen_env_example.py --check   # exit 1 if .env.example is out of date
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

from pydantic import SecretStr

from bot.common import settings as settings_module
from bot.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / ".env.example"
REQUIRED = {"bot_token"}  # left uncommented: the one line everybody must fill in

HEADER = """\
# rujokes settings. Copy to `.env` and set BOT_TOKEN; everything else has a working default.
# Names are case-insensitive; real environment variables override this file.
# Generated from bot/common/settings.py by scripts/gen_env_example.py: edit the Settings class, not this file.
#
# In @BotFather, for the bot behind BOT_TOKEN: /setinline turns inline mode on (@bot Штирлиц…),
# /setinlinefeedback lets the bot see which inline result was sent (then a joke that was not ready
# in time is written into the sent message; without it, the message's button does that).
# Privacy mode on (the default) is enough for commands, replies to the bot's jokes and /settings in groups;
# answering `@bot …` mentions in a group needs it off (/setprivacy → Disable) or the bot a group admin.
"""


def field_groups() -> list[tuple[str, list[str]]]:
    """(group title, field names) in source order, from the `# -- title --` comments in Settings."""
    source = inspect.getsource(settings_module.Settings)
    groups: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if title := re.match(r"^    # -- (.+?) --\s*$", line):
            groups.append((title.group(1), []))
        elif (name := re.match(r"^    (\w+):", line)) and name.group(1) in Settings.model_fields:
            if not groups:
                groups.append(("general", []))
            groups[-1][1].append(name.group(1))
    return groups


def default_text(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if value is None:  # "NAME=" reads back as None (e.g. no metrics port)
        return ""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    return str(value)


def render() -> str:
    lines = [HEADER]
    listed = set()
    for title, names in field_groups():
        lines.append(f"\n# ---- {title} ----\n")
        for name in names:
            listed.add(name)
            description = Settings.model_fields[name].description or ""
            lines.append("")
            lines += [f"# {part}" for part in description.splitlines()]
            prefix = "" if name in REQUIRED else "# "
            lines.append(f"{prefix}{name.upper()}={default_text(name)}")
        lines.append("")
    missing = set(Settings.model_fields) - listed
    if missing:  # a field outside the class body's groups: fail rather than leave it out
        raise SystemExit(f"fields not found in Settings' source: {sorted(missing)}")
    return "\n".join(lines).replace("\n\n\n", "\n\n").rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that .env.example is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python scripts/gen_env_example.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
