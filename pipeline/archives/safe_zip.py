"""Zip extraction for archive downloads that trusts nothing in the archive.

Refuses, before writing anything: absolute member names, drive letters, `..` components and
symbolic links (zip-slip), duplicate names, more members or more declared bytes than the limits
(zip bomb). While writing, counts the real bytes, so a member that inflates beyond what it
declares is caught as well. Reads and writes in fixed-size chunks (bounded memory) and returns
each member's MD5 so callers can verify it without reading the files again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import stat
import zipfile
import zlib

from pipeline.archives.series import ArchiveError

CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class ZipLimits:
    """Bomb limits of one archive."""

    max_uncompressed_bytes: int = 16 << 30
    max_files: int = 20_000


@dataclasses.dataclass(frozen=True)
class ExtractedFile:
    """One extracted member: its safe relative name (POSIX), size in bytes and MD5 (hex)."""

    name: str
    size: int
    md5: str


def safe_member_name(raw: str, label: str = "archive") -> str:
    """The member's relative POSIX path, or raises ArchiveError(zip_slip) if it could escape.

    `label` names the archive in the error message.
    """
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":") or "\x00" in name:
        raise ArchiveError("zip_slip", f"{label}: member {raw!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise ArchiveError("zip_slip", f"{label}: member {raw!r} climbs out of the extraction directory")
    if not parts:
        raise ArchiveError("bad_zip", f"{label}: member {raw!r} has an empty name")
    return posixpath.join(*parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _checked_members(archive: zipfile.ZipFile, limits: ZipLimits, label: str) -> list[tuple[zipfile.ZipInfo, str]]:
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) > limits.max_files:
        raise ArchiveError("zip_bomb", f"{label} holds {len(members)} files, more than the limit of {limits.max_files}")
    declared = sum(info.file_size for info in members)
    if declared > limits.max_uncompressed_bytes:
        raise ArchiveError("zip_bomb", f"{label} declares {declared} uncompressed bytes, more than the limit of "
                                       f"{limits.max_uncompressed_bytes}")
    checked, names = [], set()
    for info in members:
        if _is_symlink(info):
            raise ArchiveError("zip_slip", f"{label}: member {info.filename!r} is a symbolic link")
        name = safe_member_name(info.filename, label)
        if name.lower() in names:
            raise ArchiveError("bad_zip", f"{label}: member name {name!r} occurs twice")
        names.add(name.lower())
        checked.append((info, name))
    return checked


def extract_zip(zip_path: str, destination: str, limits: ZipLimits) -> list[ExtractedFile]:
    """Extracts every file of a local zip under `destination` (created if needed).

    Raises ArchiveError: zip_slip, zip_bomb, bad_zip (not a zip, truncated, CRC error). On error
    the files written so far stay in `destination`: extract into a scratch directory.
    """
    label = os.path.basename(zip_path)
    root = os.path.realpath(destination)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _checked_members(archive, limits, label)
            extracted, total = [], 0
            for info, name in members:
                target = os.path.realpath(os.path.join(root, *name.split("/")))
                if os.path.commonpath([root, target]) != root:
                    raise ArchiveError("zip_slip", f"{label}: member {info.filename!r} resolves outside {destination}")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                digest, size = hashlib.md5(), 0
                with archive.open(info) as source, open(target, "xb") as sink:
                    while chunk := source.read(CHUNK_BYTES):
                        size += len(chunk)
                        total += len(chunk)
                        if size > info.file_size or total > limits.max_uncompressed_bytes:
                            raise ArchiveError("zip_bomb", f"{label}: member {info.filename!r} inflates beyond its declared "
                                                           f"{info.file_size} bytes or the archive limit")
                        digest.update(chunk)
                        sink.write(chunk)
                extracted.append(ExtractedFile(name, size, digest.hexdigest()))
            return extracted
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise ArchiveError("bad_zip", f"{label} is not a complete zip archive: {type(error).__name__}: {error}") from error
    except FileExistsError as error:
        raise ArchiveError("bad_zip", f"{label}: member {error.filename} is written twice") from error
