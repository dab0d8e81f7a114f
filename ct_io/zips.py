"""Zip archives of CT files, trusting nothing in the archive: extraction to disk and bounded
reading in memory share one size check of the members.

Refused before anything is read: more members, more declared bytes in all or in one member, or a
member of more than 1 MiB expanding more than `max_ratio` times (zip bomb). Extraction also
refuses absolute member names, drive letters, `..` components and symbolic links (zip-slip),
duplicate and encrypted members; reading in memory writes nothing, so it skips encrypted members
and lets any name pass. While reading, the real bytes are counted too, so a member that inflates
beyond what it declares is caught.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import posixpath
import stat
import zipfile
import zlib

from ct_io.errors import CTInputError

CHUNK_BYTES = 1 << 20
"""Bytes read or written at a time (bounded memory)."""
RATIO_CHECK_BYTES = 1 << 20
"""Members larger than this must not expand more than `ZipLimits.max_ratio` times."""


@dataclasses.dataclass(frozen=True)
class ZipLimits:
    """Bomb limits of one archive: bytes once expanded (in all, per member), members, and the
    largest expansion ratio of a member."""

    total_bytes: int = 64 << 30
    member_bytes: int = 2 << 30
    max_files: int = 20_000
    max_ratio: float = 250.0


@dataclasses.dataclass(frozen=True)
class ExtractedFile:
    """One extracted member: its safe relative name (POSIX), size in bytes and MD5 (hex)."""

    name: str
    size: int
    md5: str


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


def safe_member_name(raw: str, label: str = "archive") -> str:
    """The member's relative POSIX path, or CTInputError(zip_slip) if it could escape (bad_zip
    for an empty name). `label` names the archive in the message."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":") or "\x00" in name:
        raise CTInputError("zip_slip", f"{label}: member {raw!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise CTInputError("zip_slip", f"{label}: member {raw!r} climbs out of the extraction directory")
    if not parts:
        raise CTInputError("bad_zip", f"{label}: member {raw!r} has an empty name")
    return posixpath.join(*parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _bounded_members(archive: zipfile.ZipFile, limits: ZipLimits, label: str) -> tuple[list[zipfile.ZipInfo], list[str]]:
    """(members within the bomb limits, in archive order; names of encrypted members left out).

    Raises CTInputError(zip_bomb).
    """
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) > limits.max_files:
        raise CTInputError("zip_bomb", f"{label} holds {len(members)} files, more than the limit of {limits.max_files}")
    declared = sum(info.file_size for info in members)
    if declared > limits.total_bytes:
        raise CTInputError("zip_bomb", f"{label} declares {declared} uncompressed bytes, more than the limit of "
                                       f"{limits.total_bytes}")
    for info in members:
        if info.file_size > limits.member_bytes:
            raise CTInputError("zip_bomb", f"{label}: member {info.filename!r} expands to {info.file_size} bytes, more "
                                           f"than the {limits.member_bytes} allowed for one member")
        if info.file_size > RATIO_CHECK_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise CTInputError("zip_bomb", f"{label}: member {info.filename!r} expands "
                                           f"{info.file_size / max(info.compress_size, 1):.0f} times (more than "
                                           f"{limits.max_ratio:.0f}): refusing a possible zip bomb")
    encrypted = [info.filename for info in members if info.flag_bits & 0x1]
    return [info for info in members if not info.flag_bits & 0x1], encrypted


def _extractable_members(archive: zipfile.ZipFile, limits: ZipLimits, label: str) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every member with its safe relative name, for writing to disk.

    Raises CTInputError: zip_slip, zip_bomb, bad_zip (duplicate names, encrypted members).
    """
    members, encrypted = _bounded_members(archive, limits, label)
    if encrypted:
        raise CTInputError("bad_zip", f"{label}: member {encrypted[0]!r} is encrypted")
    checked, names = [], set()
    for info in members:
        if _is_symlink(info):
            raise CTInputError("zip_slip", f"{label}: member {info.filename!r} is a symbolic link")
        name = safe_member_name(info.filename, label)
        if name.lower() in names:
            raise CTInputError("bad_zip", f"{label}: member name {name!r} occurs twice")
        names.add(name.lower())
        checked.append((info, name))
    return checked


def _bad_zip(label: str, error: Exception) -> CTInputError:
    return CTInputError("bad_zip", f"{label} is not a complete zip archive: {type(error).__name__}: {error}")


def extract_zip(zip_path: str, destination: str, limits: ZipLimits) -> list[ExtractedFile]:
    """Extracts every file of a local zip under `destination` (created if needed).

    Raises CTInputError: zip_slip, zip_bomb, bad_zip (not a zip, truncated, CRC error, encrypted
    member). On error the files written so far stay in `destination`: extract into a scratch
    directory.
    """
    label = os.path.basename(zip_path)
    root = os.path.realpath(destination)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _extractable_members(archive, limits, label)
            extracted, total = [], 0
            for info, name in members:
                target = os.path.realpath(os.path.join(root, *name.split("/")))
                if os.path.commonpath([root, target]) != root:
                    raise CTInputError("zip_slip", f"{label}: member {info.filename!r} resolves outside {destination}")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                digest, size = hashlib.md5(), 0
                with archive.open(info) as source, open(target, "xb") as sink:
                    while chunk := source.read(CHUNK_BYTES):
                        size += len(chunk)
                        total += len(chunk)
                        if size > info.file_size or total > limits.total_bytes:
                            raise CTInputError("zip_bomb", f"{label}: member {info.filename!r} inflates beyond its "
                                                           f"declared {info.file_size} bytes or the archive limit")
                        digest.update(chunk)
                        sink.write(chunk)
                extracted.append(ExtractedFile(name, size, digest.hexdigest()))
            return extracted
    except _ZIP_ERRORS as error:
        raise _bad_zip(label, error) from error
    except FileExistsError as error:
        raise CTInputError("bad_zip", f"{label}: member {error.filename} is written twice") from error


class ZipReader(contextlib.AbstractContextManager):
    """The members of a local zip read into memory one at a time, never extracted (so member
    names cannot write anywhere and are not checked).

    `members` are the readable member names in archive order, `encrypted` those left out.
    Raises CTInputError (zip_bomb, bad_zip) on opening and reading.
    """

    def __init__(self, zip_path: str, limits: ZipLimits = ZipLimits()):
        self.label = zip_path
        self.limits = limits
        try:
            self._archive = zipfile.ZipFile(zip_path)
        except (*_ZIP_ERRORS, OSError) as error:
            raise _bad_zip(zip_path, error) from error
        try:
            members, self.encrypted = _bounded_members(self._archive, limits, zip_path)
        except CTInputError:
            self._archive.close()
            raise
        self._infos = {info.filename: info for info in members}
        self.members = [info.filename for info in members]

    def read(self, member: str) -> bytes:
        """The bytes of `member`, at most its declared size (else zip_bomb)."""
        info = self._infos[member]
        try:
            with self._archive.open(info) as handle:
                data = handle.read(info.file_size + 1)
        except (*_ZIP_ERRORS, OSError) as error:
            raise CTInputError("bad_zip", f"cannot read {self.label}!{member}: {type(error).__name__}: {error}") from error
        if len(data) > info.file_size:
            raise CTInputError("zip_bomb", f"{self.label}!{member} inflates beyond its declared {info.file_size} bytes")
        return data

    def __exit__(self, *exc_info) -> None:
        self._archive.close()
