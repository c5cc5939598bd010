"""Large files travel as checksummed parts, dealt into returns the GPU machine can bring back; a damaged or
missing part is refused, never joined."""
from __future__ import annotations

import json
import os

import pytest

from trainer.parts import (
    MANIFEST_SUFFIX,
    RETURN_ARCHIVE,
    PartsError,
    join_parts,
    pack_for_return,
    split_file,
    unpack_return,
)


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


# ---------------------------------------------------------------- packing for the GPU machine's returns

@pytest.fixture()
def export_files(tmp_path):
    """A bundle like train_gpu.py's: one large file per size, small files beside them."""
    source = tmp_path / "source"
    files = {}
    for name, size in [("weights/small/model.safetensors", 9_000), ("weights/mini/model.safetensors", 4_000),
                       ("weights/mini/config.json", 50), ("summary.json", 30), ("runs/small/README.md", 200)]:
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        files[name] = path
    return files


def returned(folder):
    return sorted(p for p in folder.iterdir() if p.is_file())


def test_packed_returns_each_fit_the_limits_and_unpack_to_the_same_files(export_files, tmp_path):
    folders = pack_for_return(export_files, tmp_path / "out", tmp_path / "rest",
                              loose=(export_files["summary.json"],), part_bytes=2_000, max_files=4, max_bytes=7_000)
    assert folders[0] == tmp_path / "out" and len(folders) >= 3  # ≈ 14 kB of tar over returns of ≤ 7 kB
    for folder in folders:
        files = returned(folder)
        assert len(files) <= 4 and sum(p.stat().st_size for p in files) <= 7_000
        assert all(p.stat().st_size <= 2_000 for p in files if ".part" in p.name[-8:])
    first = {p.name for p in returned(folders[0])}
    assert {RETURN_ARCHIVE + MANIFEST_SUFFIX, "summary.json"} <= first  # the manifest and the glance come first
    export = unpack_return(folders, tmp_path / "work")
    for name, path in export_files.items():
        assert (export / name).read_bytes() == path.read_bytes()


def test_a_bundle_that_fits_one_return_needs_no_second_call(export_files, tmp_path):
    folders = pack_for_return(export_files, tmp_path / "out", tmp_path / "rest")
    assert folders == [tmp_path / "out"]
    assert (unpack_return(folders, tmp_path / "work") / "weights/small/model.safetensors").read_bytes() == \
        export_files["weights/small/model.safetensors"].read_bytes()


def test_a_return_left_behind_or_corrupted_stops_the_unpacking(export_files, tmp_path):
    folders = pack_for_return(export_files, tmp_path / "out", tmp_path / "rest", part_bytes=2_000, max_files=4,
                              max_bytes=7_000)
    with pytest.raises(PartsError, match="missing part"):
        unpack_return(folders[:-1], tmp_path / "work")  # the last call's parts never fetched
    assert not (tmp_path / "work" / "export").exists()
    part = returned(folders[-1])[0]
    data = bytearray(part.read_bytes())
    data[5] ^= 0x01
    part.write_bytes(bytes(data))
    with pytest.raises(PartsError, match="checksum"):
        unpack_return(folders, tmp_path / "work")
    assert not (tmp_path / "work" / "export").exists()
    with pytest.raises(PartsError, match="no gpu-export.tar.parts.json"):
        unpack_return(folders[1:], tmp_path / "work")  # the first return, with the manifest, is missing


def test_packing_refuses_parts_larger_than_a_return(export_files, tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        pack_for_return(export_files, tmp_path / "out", tmp_path / "rest", part_bytes=8_000, max_bytes=7_000)
