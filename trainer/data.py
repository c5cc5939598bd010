"""Joke corpus loading: file readers, text normalisation, deduplication and a stable train/val split."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The corpus lives in the workspace's shared/ folder, next to the repository; it is never copied in.
DEFAULT_CORPUS = str(Path(__file__).resolve().parents[1].parent / "shared/data/russian_jokes.jsonl")
HUB_PREFIX = "hf://"
# Files of the hub dataset repo (IgorVolochay/russian_jokes), in order of preference.
HUB_FILES = ("dataset.json", "dataset.jsonl", "dataset.csv", "dataset.txt")
# Keys under which a .json file's top-level object may keep its list of jokes.
JSON_LIST_KEYS = ("text", "texts", "jokes", "data", "items", "rows")
# A corpus may come compressed (`jokes.jsonl.xz`): the GPU machine gets the corpora that way, since the
# literature alone is larger than what may travel there.
DECOMPRESSORS = {".xz": lzma.decompress, ".gz": gzip.decompress, ".bz2": bz2.decompress}


class CorpusFormatError(ValueError):
    """A corpus file cannot be read as jokes; the message names the file and the line."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = Path(path), line, problem


class _CharMap(dict):
    """str.translate table filled lazily: each distinct character is classified once, then cached."""

    SPECIAL = {"\n": "\n", "\t": " ", "\x85": "\n", "\u2028": "\n", "\u2029": "\n\n"}

    def __missing__(self, codepoint: int) -> str | None:
        char = chr(codepoint)
        category = unicodedata.category(char)
        if char in self.SPECIAL:  # tab, and the Unicode line/paragraph separators
            value: str | None = self.SPECIAL[char]
        elif category == "Zs":  # NBSP, narrow NBSP, em space, ideographic space, ...
            value = " "
        elif category in ("Cf", "Cc"):  # zero-width chars, BOM, soft hyphen, bidi marks; control chars
            value = None
        else:
            value = char
        self[codepoint] = value
        return value


_CHAR_MAP = _CharMap()
_SPACE_RUN = re.compile(r"[ \t]+")
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """Canonical form of a joke: NFC, no invisible/control chars, plain spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text.translate(_CHAR_MAP))
    text = _SPACE_RUN.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    # Single newlines separate dialogue lines and stay; longer gaps carry no meaning.
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def dedupe_key(text: str) -> str:
    """Key under which two jokes count as the same: ignores case, ё/е and all whitespace."""
    return _fold(normalize_text(text))


def _fold(normalized: str) -> str:
    return "".join(normalized.casefold().replace("ё", "е").split())


def _format_suffix(path: Path) -> str:
    """`.jsonl` for both `jokes.jsonl` and `jokes.jsonl.xz`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in DECOMPRESSORS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix.lower() in DECOMPRESSORS:
        try:
            data = DECOMPRESSORS[path.suffix.lower()](data)
        except (lzma.LZMAError, OSError, EOFError) as error:  # gzip and bz2 raise OSError/EOFError
            raise CorpusFormatError(path, None, f"not a valid {path.suffix} file ({error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CorpusFormatError(path, line, f"not valid UTF-8 ({error.reason})") from None


def _checked_text(value: object, path: Path, line: int | None, what: str) -> str:
    if not isinstance(value, str):
        raise CorpusFormatError(path, line, f"{what} must be a string, got {type(value).__name__}")
    return value


def read_jsonl(path: Path | str, text_field: str = "text") -> list[str]:
    """One JSON object per line, joke under `text_field`; blank lines are skipped."""
    path = Path(path)
    texts = []
    for line_number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusFormatError(path, line_number, f"bad JSON ({error.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise CorpusFormatError(path, line_number, f"expected an object with field {text_field!r}")
        texts.append(_checked_text(record[text_field], path, line_number, f"field {text_field!r}"))
    return texts


def _json_records(data: object, path: Path) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        found = [data[key] for key in JSON_LIST_KEYS if key in data]
        found = found or [value for value in data.values() if isinstance(value, (list, dict))]
        if len(found) == 1:
            # pandas' DataFrame.to_json() writes {"text": {"0": ..., "1": ...}}: take the values.
            records = found[0]
            return list(records.values()) if isinstance(records, dict) else records
    raise CorpusFormatError(path, None, "expected a JSON list of jokes or an object holding one such list")


def read_json(path: Path | str, text_field: str = "text") -> list[str]:
    """A JSON list of strings or of objects with `text_field`, possibly under a key of a top-level object."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise CorpusFormatError(path, error.lineno, f"bad JSON ({error.msg})") from None
    texts = []
    for index, record in enumerate(_json_records(data, path)):
        # A .json file has no rows, so errors name the list item instead of a line.
        where = f"item {index}"
        if isinstance(record, dict):
            if text_field not in record:
                raise CorpusFormatError(path, None, f"{where}: missing field {text_field!r}")
            record = record[text_field]
        texts.append(_checked_text(record, path, None, f"{where}: text"))
    return texts


def read_csv(path: Path | str, text_column: str = "text") -> list[str]:
    """CSV with a header row; jokes in `text_column` (quoted fields may span lines)."""
    path = Path(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None or text_column not in header:
            raise CorpusFormatError(path, 1, f"no column {text_column!r} in header {header}")
        column = header.index(text_column)
        texts, row_start = [], reader.line_num + 1
        for row in reader:
            if row:  # csv yields [] for blank lines
                if len(row) <= column:
                    raise CorpusFormatError(path, row_start, f"row has no {text_column!r} value")
                texts.append(row[column])
            row_start = reader.line_num + 1
    except csv.Error as error:
        raise CorpusFormatError(path, reader.line_num, f"bad CSV ({error})") from None
    return texts


def read_txt(path: Path | str) -> list[str]:
    """Plain text, one joke per block; blocks are separated by blank lines."""
    text = _read_text(Path(path)).replace("\r\n", "\n").replace("\r", "\n")
    return [block for block in re.split(r"\n[ \t]*\n", text) if block.strip()]


def read_file(path: Path | str, text_column: str = "text") -> list[str]:
    """Dispatch on the file extension (under a `.xz`, `.gz` or `.bz2` one); `text_column` names the JSON field
    or CSV column."""
    path = Path(path)
    readers = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".txt": lambda p, _: read_txt(p)}
    if _format_suffix(path) not in readers:
        raise CorpusFormatError(path, None, "unsupported file type (expected .jsonl, .json, .csv or .txt, "
                                            "possibly compressed as .xz, .gz or .bz2)")
    return readers[_format_suffix(path)](path, text_column)


def read_directory(directory: Path | str, text_column: str = "text") -> list[str]:
    """A folder laid out like the hub repo: the first of HUB_FILES found, else every *.jsonl in name order."""
    directory = Path(directory)
    # The hub repo holds the same jokes in several formats: read one of them, never all.
    for name in HUB_FILES:
        if (directory / name).is_file():
            return read_file(directory / name, text_column)
    jsonl_files = sorted(directory.glob("*.jsonl"))
    if not jsonl_files:
        raise FileNotFoundError(f"{directory}: none of {', '.join(HUB_FILES)} or *.jsonl found")
    return [text for path in jsonl_files for text in read_jsonl(path, text_column)]


def download_hub_dataset(
    repo_id: str, revision: str | None = None, cache_dir: Path | str | None = None
) -> Path:
    """Fetch the corpus files of a hub dataset repo and return the local snapshot folder."""
    from huggingface_hub import snapshot_download  # imported lazily: only hub sources need it

    folder = snapshot_download(
        repo_id=repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir,
        allow_patterns=[*HUB_FILES, "*.jsonl"],
    )
    return Path(folder)


def load_corpus(
    source: str | Path = DEFAULT_CORPUS,
    *,
    text_column: str = "text",
    hub_dir: Path | str | None = None,
    revision: str | None = None,
    cache_dir: Path | str | None = None,
) -> list[str]:
    """Normalised, non-empty, deduplicated jokes in source order (first occurrence wins).

    `source` is a file, a folder laid out like the hub repo, or `hf://owner/name[@revision]`;
    for the latter, `hub_dir` (a local copy of the repo) is read instead of downloading.
    """
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        repo_id, _, pinned = source[len(HUB_PREFIX):].partition("@")
        if repo_id.count("/") != 1:
            raise ValueError(f"{source}: expected hf://owner/name")
        if hub_dir is None:
            hub_dir = download_hub_dataset(repo_id, revision or pinned or None, cache_dir)
        raw_texts = read_directory(hub_dir, text_column)
    elif Path(source).is_dir():
        raw_texts = read_directory(source, text_column)
    elif Path(source).is_file():
        raw_texts = read_file(source, text_column)
    else:
        raise FileNotFoundError(f"corpus not found: {source}")
    seen: set[str] = set()
    jokes = []
    for raw in raw_texts:
        text = normalize_text(raw)
        key = _fold(text)
        if text and key not in seen:
            seen.add(key)
            jokes.append(text)
    return jokes


def is_validation(text: str, val_fraction: float = 0.05, salt: str = "rujokes-v1") -> bool:
    """Whether a joke belongs to validation; depends on the joke alone, so it never changes split."""
    # Hashing the dedupe key keeps near-identical variants (case, ё) on the same side.
    digest = hashlib.blake2b(f"{salt}\x00{dedupe_key(text)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def split_train_val(
    texts: list[str], val_fraction: float = 0.05, salt: str = "rujokes-v1"
) -> tuple[list[str], list[str]]:
    """Split by a salted hash of each text; input order is kept within each split."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    train, val = [], []
    for text in texts:
        (val if is_validation(text, val_fraction, salt) else train).append(text)
    return train, val


@dataclass(frozen=True)
class Corpus:
    train: list[str] = field(repr=False)  # training jokes, in source order
    val: list[str] = field(repr=False)  # held-out jokes for validation loss
    source: str  # where they came from: a path or hf:// id


def prepare_corpus(
    source: str | Path = DEFAULT_CORPUS,
    val_fraction: float = 0.05,
    salt: str = "rujokes-v1",
    **load_options: Any,
) -> Corpus:
    """Load, clean and split a corpus in one call; `load_options` go to `load_corpus`."""
    train, val = split_train_val(load_corpus(source, **load_options), val_fraction, salt)
    return Corpus(train=train, val=val, source=str(source))
