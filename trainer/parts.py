"""Split a large file into checksummed parts and join them back, verified.

The GPU machine returns files of at most 64 MB, and small's weights are larger: the training script splits
each large file into parts below that with a manifest of SHA-256 sums, and the CPU side joins them, refusing
a missing, truncated or corrupted part rather than loading a damaged checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST_SUFFIX = ".parts.json"
DEFAULT_PART_BYTES = 60 * 2**20
_CHUNK = 4 * 2**20


class PartsError(ValueError):
    """A part is missing or does not match its manifest."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def split_file(path: str | Path, max_part_bytes: int = DEFAULT_PART_BYTES, *, remove: bool = False) -> Path:
    """Write `path.part000`, `path.part001`, … beside `path` and a manifest; returns the manifest's path."""
    path = Path(path)
    if max_part_bytes < 1:
        raise ValueError("max_part_bytes must be positive")
    parts = []
    with open(path, "rb") as source:
        index = 0
        while True:
            data = source.read(max_part_bytes)
            if not data and index:
                break
            part = path.with_name(f"{path.name}.part{index:03d}")
            part.write_bytes(data)
            parts.append({"name": part.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            index += 1
            if len(data) < max_part_bytes:
                break
    manifest = path.with_name(path.name + MANIFEST_SUFFIX)
    manifest.write_text(json.dumps({"file": path.name, "size": path.stat().st_size, "sha256": sha256_of(path),
                                    "parts": parts}, indent=2) + "\n")
    if remove:
        path.unlink()
    return manifest


def join_parts(manifest_path: str | Path, *, remove_parts: bool = False) -> Path:
    """Rebuild the file a manifest describes, beside it; every part and the whole are checked first."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    folder = manifest_path.parent
    for part in manifest["parts"]:
        part_path = folder / part["name"]
        if not part_path.is_file():
            raise PartsError(f"missing part {part_path}")
        if part_path.stat().st_size != part["size"] or sha256_of(part_path) != part["sha256"]:
            raise PartsError(f"part {part_path} does not match its checksum in {manifest_path.name}")
    target = folder / manifest["file"]
    partial = target.with_name(target.name + ".joining")
    with open(partial, "wb") as out:
        for part in manifest["parts"]:
            out.write((folder / part["name"]).read_bytes())
    if partial.stat().st_size != manifest["size"] or sha256_of(partial) != manifest["sha256"]:
        partial.unlink()
        raise PartsError(f"{target} joined from its parts does not match the manifest's checksum")
    os.replace(partial, target)  # never a half-written checkpoint under the real name
    if remove_parts:
        for part in manifest["parts"]:
            (folder / part["name"]).unlink()
        manifest_path.unlink()
    return target


def join_all(folder: str | Path, *, remove_parts: bool = True) -> list[Path]:
    """Join every split file under `folder` (what came back from the GPU machine)."""
    return [join_parts(m, remove_parts=remove_parts) for m in sorted(Path(folder).rglob("*" + MANIFEST_SUFFIX))]
