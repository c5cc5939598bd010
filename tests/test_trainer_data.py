"""Corpus loading: readers per format, format errors, normalisation, dedupe, hash split, hub layout."""

import bz2
import csv
import gzip
import json
import lzma
import sys
import types
from pathlib import Path

import pytest

from trainer.data import (
    DEFAULT_CORPUS,
    Corpus,
    CorpusFormatError,
    dedupe_key,
    load_corpus,
    normalize_text,
    prepare_corpus,
    read_csv,
    read_json,
    read_jsonl,
    read_txt,
    split_train_val,
)

DIALOGUE = "— Ёжик, ты где?\n— Тут! 🦔"
PLAIN = "Штирлиц шёл по коридору. 😀"
LONG = "Встречаются как-то русский, немец и француз…"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- readers

def test_jsonl_reads_text_field_and_keeps_dialogue_newlines(tmp_path):
    path = write_jsonl(tmp_path / "j.jsonl", [{"text": DIALOGUE, "source": "x"}, {"text": PLAIN}])
    assert read_jsonl(path) == [DIALOGUE, PLAIN]
    assert load_corpus(path) == [DIALOGUE, PLAIN]


def test_json_list_of_objects_list_of_strings_and_object_with_list(tmp_path):
    (tmp_path / "objects.json").write_text(json.dumps([{"text": DIALOGUE}, {"text": PLAIN}]), encoding="utf-8")
    (tmp_path / "strings.json").write_text(json.dumps([DIALOGUE, PLAIN], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "wrapped.json").write_text(json.dumps({"jokes": [DIALOGUE, PLAIN]}), encoding="utf-8")
    for name in ("objects.json", "strings.json", "wrapped.json"):
        assert read_json(tmp_path / name) == [DIALOGUE, PLAIN], name


def test_json_pandas_columns_layout(tmp_path):
    path = tmp_path / "pandas.json"
    path.write_text(json.dumps({"text": {"0": DIALOGUE, "1": PLAIN}}), encoding="utf-8")
    assert read_json(path) == [DIALOGUE, PLAIN]


def test_csv_default_and_custom_column_with_multiline_field(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["id", "text"], [["1", DIALOGUE], ["2", PLAIN]])
    assert read_csv(path) == [DIALOGUE, PLAIN]
    other = write_csv(tmp_path / "b.csv", ["joke", "rating"], [[PLAIN, "5"], [LONG, "3"]])
    assert load_corpus(other, text_column="joke") == [PLAIN, LONG]


def test_txt_blocks_separated_by_blank_lines(tmp_path):
    path = tmp_path / "jokes.txt"
    path.write_text(f"{DIALOGUE}\r\n\r\n{PLAIN}\n  \n\n\n{LONG}\n", encoding="utf-8")
    assert [normalize_text(block) for block in read_txt(path)] == [DIALOGUE, PLAIN, LONG]
    assert load_corpus(path) == [DIALOGUE, PLAIN, LONG]


def test_utf8_bom_at_file_start_is_ignored(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes("\ufeff".encode() + json.dumps({"text": PLAIN}).encode())
    assert load_corpus(path) == [PLAIN]


# ---------------------------------------------------------------- format errors

def assert_format_error(error: pytest.ExceptionInfo, path: Path, line: int | None, words: str) -> None:
    message = str(error.value)
    assert str(path) in message
    if line is not None:
        assert f"line {line}" in message and error.value.line == line
    assert words in message


@pytest.mark.parametrize(
    ("line_text", "words"),
    [('{"text": "Штирлиц', "bad JSON"), ('{"body": "нет текста"}', "'text'"), ('{"text": 42}', "int")],
)
def test_jsonl_malformed_line_names_file_and_line(tmp_path, line_text, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{{"text": "ок"}}\n\n{line_text}\n{{"text": "ещё"}}\n', encoding="utf-8")
    with pytest.raises(CorpusFormatError) as error:
        read_jsonl(path)
    assert_format_error(error, path, 3, words)
    assert isinstance(error.value, ValueError)


def test_json_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  "раз",\n  "два"\n  "три"\n]', encoding="utf-8")
    with pytest.raises(CorpusFormatError) as error:
        read_json(path)
    assert_format_error(error, path, 4, "bad JSON")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ([{"text": "ок"}, {"body": "нет"}], "item 1: missing field 'text'"),
        (["ок", None], "item 1: text must be a string"),
        ({"a": 1}, "list"),
    ],
)
def test_json_malformed_item_names_file_and_item(tmp_path, payload, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(CorpusFormatError) as error:
        read_json(path)
    assert_format_error(error, path, None, words)


def test_csv_missing_column_names_header_line(tmp_path):
    path = write_csv(tmp_path / "bad.csv", ["id", "joke"], [["1", PLAIN]])
    with pytest.raises(CorpusFormatError) as error:
        read_csv(path)
    assert_format_error(error, path, 1, "no column 'text'")


def test_csv_short_row_names_its_first_line(tmp_path):
    # Row 2 spans physical lines 2-3 (quoted newline), so the short row starts on line 4.
    path = tmp_path / "short.csv"
    path.write_text(f'id,text\n1,"{DIALOGUE}"\n2\n', encoding="utf-8")
    with pytest.raises(CorpusFormatError) as error:
        read_csv(path)
    assert_format_error(error, path, 4, "no 'text' value")


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "broken.txt"
    path.write_bytes("раз\n\nдва\n".encode() + b"\xff\xfe oops\n")
    with pytest.raises(CorpusFormatError) as error:
        read_txt(path)
    assert_format_error(error, path, 4, "UTF-8")


@pytest.mark.parametrize(("suffix", "compress"), [(".xz", lzma.compress), (".gz", gzip.compress),
                                                  (".bz2", bz2.compress)])
def test_a_compressed_corpus_reads_like_the_plain_one(tmp_path, suffix, compress):
    plain = write_jsonl(tmp_path / "jokes.jsonl", [{"text": DIALOGUE}, {"text": PLAIN}, {"text": LONG}])
    packed = tmp_path / f"packed.jsonl{suffix}"
    packed.write_bytes(compress(plain.read_bytes()))
    assert load_corpus(packed) == load_corpus(plain)
    assert prepare_corpus(packed).train == prepare_corpus(plain).train
    (tmp_path / "jokes.csv.gz").write_bytes(gzip.compress("text\nраз\n".encode()))
    assert load_corpus(tmp_path / "jokes.csv.gz") == ["раз"]


def test_a_damaged_or_unknown_compressed_file_names_the_file(tmp_path):
    damaged = tmp_path / "jokes.jsonl.xz"
    damaged.write_bytes(lzma.compress(b'{"text": "x"}\n')[:-8])
    with pytest.raises(CorpusFormatError, match="not a valid .xz file") as error:
        load_corpus(damaged)
    assert error.value.path == damaged
    (tmp_path / "jokes.xml.gz").write_bytes(gzip.compress(b"<joke/>"))
    with pytest.raises(CorpusFormatError, match="unsupported"):
        load_corpus(tmp_path / "jokes.xml.gz")


def test_missing_source_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "jokes.xml").write_text("<joke/>", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="unsupported"):
        load_corpus(tmp_path / "jokes.xml")


# ---------------------------------------------------------------- normalisation

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # zero-width space / non-joiner / joiner, word joiner, BOM
        ("При\u200bвет\u200c,\u200d мир\u2060\ufeff", "Привет, мир"),
        ("пере\u00adнос", "перенос"),  # soft hyphen
        # NBSP, narrow NBSP, thin space, ideographic space
        ("10\u00a0000\u202fрублей\u2009и\u3000всё", "10 000 рублей и всё"),
        ("— Где?\r\n— Тут!\rКонец", "— Где?\n— Тут!\nКонец"),  # CRLF and CR
        ("звон\x07ок\x00\x1b[0m\x7f", "звонок[0m"),  # control chars removed
        ("слово\t\tслово   слово", "слово слово слово"),  # tabs and space runs
        ("  — Раз  \n   — Два \n", "— Раз\n— Два"),  # spaces around newlines, outer strip
        ("абзац\n\n\n\n\nабзац\n\nещё", "абзац\n\nабзац\n\nещё"),  # 3+ newlines -> 2
        ("строка\u2028строка", "строка\nстрока"),  # Unicode line separator
        ("е\u0308лка", "ёлка"),  # NFC composes ё
        ("\u200b \u00a0\n\t", ""),  # nothing visible left
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_keeps_emoji_and_is_idempotent():
    text = "Кот 🐈‍⬛ и флаг 🇷🇺, сердце ❤️"
    once = normalize_text(text)
    assert "🇷🇺" in once and "❤️" in once and "🐈" in once
    assert normalize_text(once) == once


# ---------------------------------------------------------------- dedupe

def test_dedupe_ignores_case_yo_and_whitespace_and_keeps_first(tmp_path):
    records = [
        {"text": "Ёжик шёл\nпо лесу."},
        {"text": PLAIN},
        {"text": "ежик  шел по\u00a0ЛЕСУ."},  # same joke: case, ё, whitespace
        {"text": "\u200b"},  # empty after normalisation
        {"text": "Ёжик шёл по лесу!"},  # different punctuation: a different joke
        {"text": PLAIN + "\u200b"},
    ]
    path = write_jsonl(tmp_path / "dup.jsonl", records)
    assert load_corpus(path) == ["Ёжик шёл\nпо лесу.", PLAIN, "Ёжик шёл по лесу!"]
    assert dedupe_key("Ёжик  Шёл") == dedupe_key("ежик\nшел") == "ежикшел"


# ---------------------------------------------------------------- split

def synthetic(count: int, start: int = 0) -> list[str]:
    return [f"Анекдот номер {i}: заходит улитка в бар…" for i in range(start, start + count)]


def test_split_is_deterministic_order_preserving_and_disjoint():
    texts = synthetic(2000)
    train, val = split_train_val(texts, val_fraction=0.05)
    assert (train, val) == split_train_val(list(texts), val_fraction=0.05)
    assert sorted(train + val) == sorted(texts) and not set(train) & set(val)
    train_set, val_set = set(train), set(val)
    assert train == [t for t in texts if t in train_set] and val == [t for t in texts if t in val_set]
    assert 60 <= len(val) <= 140  # 5% of 2000 = 100, ~±4.5 sigma


def test_growing_corpus_never_moves_existing_text_between_splits():
    old = synthetic(1000)
    old_train, old_val = split_train_val(old)
    grown = synthetic(500, start=5000)[:250] + old + synthetic(500, start=9000)  # new texts before and after
    new_train, new_val = split_train_val(grown)
    assert set(old_train) <= set(new_train) and set(old_val) <= set(new_val)
    old_set = set(old)
    assert [t for t in new_val if t in old_set] == old_val


def test_split_salt_and_fraction_bounds():
    texts = synthetic(400)
    assert split_train_val(texts, salt="a")[1] != split_train_val(texts, salt="b")[1]
    assert split_train_val(texts, val_fraction=0.0) == (texts, [])
    assert split_train_val(texts, val_fraction=1.0) == ([], texts)
    with pytest.raises(ValueError):
        split_train_val(texts, val_fraction=1.5)


def test_prepare_corpus_loads_and_splits(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in synthetic(300)])
    corpus = prepare_corpus(path, val_fraction=0.2)
    assert isinstance(corpus, Corpus) and corpus.source == str(path)
    assert len(corpus.train) + len(corpus.val) == 300 and 30 <= len(corpus.val) <= 90
    assert (corpus.train, corpus.val) == split_train_val(synthetic(300), 0.2)


# ---------------------------------------------------------------- hub layout

@pytest.fixture
def hub_repo(tmp_path) -> Path:
    """A local folder laid out like the IgorVolochay/russian_jokes dataset repo."""
    repo = tmp_path / "russian_jokes"
    repo.mkdir()
    (repo / "README.md").write_text("---\nlicense: mit\n---\n", encoding="utf-8")
    write_csv(repo / "dataset.csv", ["text"], [["из csv"], [PLAIN]])
    (repo / "dataset.json").write_text(json.dumps([DIALOGUE, PLAIN, DIALOGUE], ensure_ascii=False), encoding="utf-8")
    return repo


def test_hub_id_reads_local_hub_dir_preferring_json(hub_repo):
    assert load_corpus("hf://IgorVolochay/russian_jokes", hub_dir=hub_repo) == [DIALOGUE, PLAIN]
    (hub_repo / "dataset.json").unlink()
    assert load_corpus("hf://IgorVolochay/russian_jokes", hub_dir=hub_repo) == ["из csv", PLAIN]


def test_plain_directory_is_read_like_hub_repo(hub_repo, tmp_path):
    assert load_corpus(hub_repo) == [DIALOGUE, PLAIN]
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "b.jsonl", [{"text": PLAIN}])
    write_jsonl(shards / "a.jsonl", [{"text": DIALOGUE}])
    assert load_corpus(shards) == [DIALOGUE, PLAIN]  # *.jsonl in name order


def test_hub_id_downloads_with_snapshot_download(hub_repo, monkeypatch):
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(hub_repo)

    fake_hub = types.SimpleNamespace(snapshot_download=fake_snapshot_download)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake_hub)
    assert load_corpus("hf://IgorVolochay/russian_jokes@abc123") == [DIALOGUE, PLAIN]
    (call,) = calls
    assert call["repo_id"] == "IgorVolochay/russian_jokes" and call["repo_type"] == "dataset"
    assert call["revision"] == "abc123"
    assert {"dataset.csv", "dataset.json", "dataset.txt"} <= set(call["allow_patterns"])


def test_bad_hub_id_is_rejected():
    with pytest.raises(ValueError, match="owner/name"):
        load_corpus("hf://just-a-name", hub_dir=".")


# ---------------------------------------------------------------- real corpus

@pytest.mark.skipif(not Path(DEFAULT_CORPUS).is_file(), reason="shared corpus not present")
def test_real_shared_corpus_loads_via_default_path():
    assert Path(DEFAULT_CORPUS) == Path(__file__).resolve().parents[2] / "shared/data/russian_jokes.jsonl"
    jokes = load_corpus()
    assert 31000 < len(jokes) <= 31678
    assert all(joke == normalize_text(joke) and joke for joke in jokes[:2000])
    assert sum("\n" in joke for joke in jokes) > len(jokes) // 3  # dialogue newlines survive
    train, val = split_train_val(jokes)
    assert 0.04 < len(val) / len(jokes) < 0.06
