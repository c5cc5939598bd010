"""Split a large file into checksummed parts and join them back, verified; pack files for the GPU machine's return.

One call of the GPU machine brings back at most RETURN_MAX_FILES files of RETURN_MAX_FILE_BYTES each and
RETURN_MAX_BYTES in all, and the trained weights (small's alone: ≈ 84 MB in int8) are more than that.
`pack_for_return` puts everything into one tar, splits it into parts with a manifest of SHA-256 sums and
deals the parts into batches that each fit one call's return: the first batch (with the manifest) goes to
the call's output folder, the others wait on the machine for the calls that fetch them. The CPU side joins
the parts, refusing a missing, truncated or corrupted part rather than installing a damaged
checkpoint, and unpacks the tar (`unpack_return`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

MANIFEST_SUFFIX = ".parts.json"
# What one call of the GPU machine brings back (its tool's limits).
RETURN_MAX_FILES = 8
RETURN_MAX_FILE_BYTES = 16 * 2**20
RETURN_MAX_BYTES = 64 * 2**20
DEFAULT_PART_BYTES = 15 * 2**20  # under a returned file's limit
RETURN_ARCHIVE = "gpu-export.tar"
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


def pack_for_return(files: dict[str, Path], out: str | Path, rest: str | Path, *, loose: tuple[Path, ...] = (),
                    part_bytes: int = DEFAULT_PART_BYTES, max_files: int = RETURN_MAX_FILES,
                    max_bytes: int = RETURN_MAX_BYTES) -> list[Path]:
    """Tar `files` (name in the archive → path), split the tar into checksummed parts and deal them into
    folders that each fit one return: `out` first (with the manifest and copies of the small `loose` files,
    to read at a glance), then `rest/1`, `rest/2`, … Returns those folders, `out` first."""
    out, rest = Path(out), Path(rest)
    if part_bytes > max_bytes:
        raise ValueError(f"parts of {part_bytes} bytes do not fit a return of {max_bytes}")
    if rest.exists():
        shutil.rmtree(rest)
    staging = rest / "staging"
    staging.mkdir(parents=True)
    with tarfile.open(staging / RETURN_ARCHIVE, "w") as tar:
        for name, path in sorted(files.items()):
            tar.add(path, arcname=name)
    manifest = split_file(staging / RETURN_ARCHIVE, part_bytes, remove=True)
    first = [manifest, *loose]
    used_files, used_bytes = len(first), sum(p.stat().st_size for p in first)
    if used_files > max_files or used_bytes > max_bytes:
        raise ValueError(f"the manifest and {len(loose)} loose files do not fit one return")
    batches: list[list[Path]] = [first]
    for part in json.loads(manifest.read_text())["parts"]:
        if used_files + 1 > max_files or used_bytes + part["size"] > max_bytes:
            batches.append([])
            used_files, used_bytes = 0, 0
        batches[-1].append(staging / part["name"])
        used_files, used_bytes = used_files + 1, used_bytes + part["size"]
    folders = [out] + [rest / str(i) for i in range(1, len(batches))]
    for folder, batch in zip(folders, batches):
        folder.mkdir(parents=True, exist_ok=True)
        for path in batch:
            (shutil.copy if path in loose else shutil.move)(path, folder / path.name)
    shutil.rmtree(staging)
    return folders


def unpack_return(folders: list[str | Path], work: str | Path) -> Path:
    """Gather what the calls brought back into `work`, join and verify the archive, unpack it into
    `work/export` (names inside the archive may not leave it); returns that folder."""
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for folder in folders:
        for path in Path(folder).iterdir():
            if path.is_file():
                shutil.copy(path, work / path.name)
    manifest = work / (RETURN_ARCHIVE + MANIFEST_SUFFIX)
    if not manifest.is_file():
        raise PartsError(f"no {manifest.name} in {', '.join(map(str, folders))}")
    archive = join_parts(manifest, remove_parts=True)
    target = work / "export"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")  # refuses absolute names, `..` and links out of the folder
    archive.unlink()
    return target
