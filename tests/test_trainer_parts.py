"""Large files travel as checksummed parts; a damaged part is refused, never joined."""
from __future__ import annotations

import json
import os

import pytest

from trainer.parts import MANIFEST_SUFFIX, PartsError, join_all, join_parts, split_file


@pytest.fixture()
def big_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(10_000))
    return path


def test_split_parts_are_below_the_limit_and_join_back_identical(big_file):
    original = big_file.read_bytes()
    manifest = split_file(big_file, max_part_bytes=3_000, remove=True)
    parts = json.loads(manifest.read_text())["parts"]
    assert [p["size"] for p in parts] == [3_000, 3_000, 3_000, 1_000]
    assert not big_file.exists()
    assert join_parts(manifest).read_bytes() == original


def test_a_file_that_fits_in_one_part_round_trips(big_file):
    original = big_file.read_bytes()
    manifest = split_file(big_file, max_part_bytes=50_000, remove=True)
    assert len(json.loads(manifest.read_text())["parts"]) == 1
    assert join_parts(manifest).read_bytes() == original


def test_a_corrupted_part_is_refused_and_nothing_is_written(big_file):
    manifest = split_file(big_file, max_part_bytes=3_000, remove=True)
    part = big_file.with_name(big_file.name + ".part001")
    data = bytearray(part.read_bytes())
    data[17] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(PartsError, match="part001"):
        join_parts(manifest)
    assert not big_file.exists()
    assert not any(p.name.endswith(".joining") for p in big_file.parent.iterdir())


def test_a_missing_or_truncated_part_is_refused(big_file):
    manifest = split_file(big_file, max_part_bytes=3_000, remove=True)
    last = big_file.with_name(big_file.name + ".part003")
    last.write_bytes(last.read_bytes()[:-1])
    with pytest.raises(PartsError, match="part003"):
        join_parts(manifest)
    last.unlink()
    with pytest.raises(PartsError, match="missing"):
        join_parts(manifest)


def test_join_all_rebuilds_every_split_file_and_cleans_up(tmp_path):
    files = {}
    for name in ("a/model.safetensors", "b/model.safetensors"):
        path = tmp_path / name
        path.parent.mkdir()
        path.write_bytes(os.urandom(5_000))
        files[path] = path.read_bytes()
        split_file(path, max_part_bytes=2_000, remove=True)
    joined = join_all(tmp_path)
    assert sorted(joined) == sorted(files)
    assert all(p.read_bytes() == data for p, data in files.items())
    assert not list(tmp_path.rglob("*" + MANIFEST_SUFFIX)) and not list(tmp_path.rglob("*.part*"))
