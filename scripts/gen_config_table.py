"""Write the settings table of deploy/README.md from `bot.common.settings.Settings`: every setting, grouped,
with its default and description, between the `settings-table` markers, so the operator's doc cannot
drift from the code (tests/test_deploy.py checks it).

    python scripts/gen_config_table.py           # rewrite the table in deploy/README.md
    python scripts/gen_config_table.py --check   # exit 1 if the table is out of date
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gen_env_example import default_text, field_groups  # a sibling script: same groups, same defaults

from bot.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "deploy" / "README.md"
START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
NOTE = ("<!-- generated from bot/common/settings.py by scripts/gen_config_table.py: "
        "edit the Settings class, not this table -->")


def cell(text: str) -> str:
    """Markdown table cell: one line; pipes and '<' (which would open an HTML tag) escaped."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "\\<")


def render_table() -> str:
    lines = [NOTE, "", "| variable | default | meaning |", "|---|---|---|"]
    for title, names in field_groups():
        lines.append(f"| **{cell(title[:1].upper() + title[1:])}** | | |")
        for name in names:
            default = default_text(name)
            shown = f"`{cell(default)}`" if default else "*(empty)*"
            lines.append(f"| `{name.upper()}` | {shown} | {cell(Settings.model_fields[name].description or '')} |")
    return "\n".join(lines)


def render(readme: str) -> str:
    """`readme` with the text between the markers replaced by the current table."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise SystemExit(f"{TARGET} needs exactly one {START} ... {END} pair")
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{render_table()}\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the table is up to date")
    args = parser.parse_args(argv)
    current = TARGET.read_text(encoding="utf-8")
    text = render(current)
    if args.check:
        if current != text:
            print(f"the settings table in {TARGET} is out of date: run python scripts/gen_config_table.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote the settings table in {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
