"""TCIA's NBIA REST API (v4): list the CT series of collections, download a series as a zip.

- `list_series`: `getSeries?Collection=<c>&Modality=CT` per collection, then the listing filters
  (minimum slices, description include/exclude, max series per patient): every listed series
  ends kept or dropped with a reason.
- `fetch_series`: `getImageWithMD5Hash?SeriesInstanceUID=<uid>` (default; every file is checked
  against the archive's md5hashes.csv) or `getImage?NewFileNames=Yes&SeriesInstanceUID=<uid>`,
  streamed to a scratch file in 1 MiB chunks, extracted safely (`ct_io.zips`), then published to
  the cache (local or gs://). A marker written last makes a series complete: a partial download
  or extraction never counts, and a complete one is never fetched again.

What the real server does (read in its source, CBIIT/NBIA-TCIA `restAPI/v4/`, and in TCIA's
client tcia_utils), and what this client makes of it:
- Both zip endpoints stream (no Content-Length), so the size limit is enforced while the bytes
  arrive; a connection closed before the end of the stream is `truncated_download` (retried).
- getImage zips start with a `LICENSE` entry and getImageWithMD5Hash zips end with
  `md5hashes.csv`: both belong to the archive, not to the series; they are never counted as
  images, cached or handed to the pipeline.
- A series broken on the server comes as a well-formed but short zip (no md5hashes.csv, fewer
  images than listed). The same short archive twice in a row is final: `short_on_server`.
- A series that is not public, or does not exist, is HTTP 400 with a text body (not 401, 403
  or 404); the message quotes the body.

Timeouts, connection errors, HTTP 429 (waiting at least its Retry-After) and 5xx are retried a
bounded number of times with exponential backoff and random jitter; a damaged download (bad zip,
MD5 mismatch, a short archive not yet seen twice) is fetched again the same way. The jitter only
changes timing, never which bytes are returned. At most `max_parallel_downloads` zips are
downloaded at once per machine (every process sharing the work directory counts). Everything
that still fails raises `ArchiveError` with a stable reason.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import email.utils
import fcntl
import hashlib
import http.client
import json
import logging
import os
import random
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, ContextManager, Iterator, TypeVar

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from cli_shell.settings import setting
from ct_io.errors import CTInputError
from ct_io.zips import CHUNK_BYTES, ExtractedFile, ZipLimits, extract_zip, safe_member_name
from pipeline.archives.series import (
    DEFAULT_DESCRIPTION_EXCLUDE,
    ArchiveError,
    SeriesFilter,
    SeriesListing,
    SeriesRecord,
    collection_names,
    filter_series,
)

__all__ = ["TciaConfig", "SeriesRecord", "ArchiveError", "SeriesListing", "list_series", "fetch_series",
           "cached_series", "DEFAULT_BASE_URL", "DEFAULT_COLLECTIONS"]

LOG = logging.getLogger("ctdeblur.archives.tcia")
DEFAULT_BASE_URL = "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/"
"""The v4 API's host since TCIA's clients moved there (tcia_utils, October 2025)."""
DEFAULT_COLLECTIONS = ("CPTAC-GBM", "TCGA-SARC", "CPTAC-LUAD", "CPTAC-HNSCC")
MD5_MANIFEST = "md5hashes.csv"
LICENSE_MEMBER = "LICENSE"
ARCHIVE_MEMBERS = frozenset({MD5_MANIFEST, LICENSE_MEMBER})
"""Members the server adds to every zip (licence text, MD5 list): never images of the series."""
COMPLETE_MARKER = "_ctdeblur_complete.json"
USER_AGENT = "ctdeblur/0.1 (archive client)"
MAX_LISTING_BYTES = 256 << 20
ERROR_BODY_BYTES = 200
"""How much of an HTTP error's body a message quotes."""
T = TypeVar("T")

@dataclasses.dataclass(frozen=True)
class TciaConfig:
    """Where and how to fetch TCIA series. Times in seconds, sizes in bytes."""

    base_url: str = setting(DEFAULT_BASE_URL, "NBIA REST API base URL (v4), ending in /")
    collections: tuple[str, ...] = setting(DEFAULT_COLLECTIONS, "TCIA collections to list (CT series only)")
    timeout_s: float = setting(60.0, "socket timeout of a connect or a read (s)")
    max_download_s: float = setting(3600.0, "longest one download attempt may take (s)")
    max_attempts: int = setting(6, "attempts per request, first one included")
    backoff_initial_s: float = setting(2.0, "wait before the first retry (s); doubles each retry, with jitter")
    backoff_max_s: float = setting(120.0, "longest wait between retries (s), Retry-After excepted")
    verify_md5: bool = setting(True, "download with getImageWithMD5Hash and check every file's MD5 "
                                    "(off: getImage?NewFileNames=Yes, checked by file count only)")
    min_slices: int = setting(20, "drop series with fewer images than this")
    description_include: tuple[str, ...] = setting((), "keep only series whose SeriesDescription matches one of these "
                                                      "regexes (case-insensitive); empty = all")
    description_exclude: tuple[str, ...] = setting(DEFAULT_DESCRIPTION_EXCLUDE, "drop series whose SeriesDescription "
                                                                                "matches one of these regexes")
    max_series_per_patient: int = setting(2, "keep at most this many series per patient (most slices first); 0 = all")
    max_zip_bytes: int = setting(8 << 30, "largest series zip to download (bytes)")
    max_uncompressed_bytes: int = setting(16 << 30, "largest total size of a series' extracted files (bytes)")
    max_files: int = setting(20_000, "most files one series zip may hold")
    max_parallel_downloads: int = setting(2, "most series zips downloaded at once per worker machine (every "
                                             "process using the same work_dir counts); TCIA is one public server")
    cache_dir: str = setting(os.path.join("~", ".cache", "ctdeblur", "tcia"),
                            "download cache, local or gs:// (one directory per series UID)")
    work_dir: str = setting("", "local scratch directory for zips being downloaded and extracted "
                               "(default: the system temp directory)")

    @property
    def series_filter(self) -> SeriesFilter:
        return SeriesFilter(self.min_slices, tuple(self.description_include), tuple(self.description_exclude),
                            self.max_series_per_patient)

    @property
    def zip_limits(self) -> ZipLimits:
        return ZipLimits(total_bytes=self.max_uncompressed_bytes, max_files=self.max_files)

    def validate(self) -> "TciaConfig":
        """Returns self, or raises ValueError naming the bad setting."""
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"tcia base_url must be an http(s) URL, got {self.base_url!r}")
        if not collection_names(self.collections):
            raise ValueError("tcia collections is empty: name at least one TCIA collection, e.g. CPTAC-LUAD")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("timeout_s", "max_download_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 s, got {getattr(self, name)}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"need 0 <= backoff_initial_s <= backoff_max_s, got {self.backoff_initial_s}, {self.backoff_max_s}")
        for name in ("max_zip_bytes", "max_uncompressed_bytes", "max_files", "max_parallel_downloads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.cache_dir:
            raise ValueError("tcia cache_dir is empty: give a local directory or a gs:// path")
        self.series_filter.validate()
        return self


class _Retry(Exception):
    """A failed attempt that may succeed when repeated."""

    def __init__(self, reason: str, detail: str, status: int | None = None, wait_s: float = 0.0):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.wait_s = wait_s


class _ShortArchive(_Retry):
    """A well-formed zip with fewer images than listed, or without md5hashes.csv. `fingerprint`
    identifies its content: the same one twice means the archive itself is short."""

    def __init__(self, detail: str, fingerprint: str):
        super().__init__("incomplete_series", detail)
        self.fingerprint = fingerprint


def retry_after_s(value: str | None, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date); 0 if absent."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, config: TciaConfig, rng: random.Random) -> float:
    """Wait before retry `attempt` (1 = first retry): exponential, capped, with jitter in [d/2, d]."""
    delay = min(config.backoff_max_s, config.backoff_initial_s * 2.0 ** (attempt - 1))
    return delay * (0.5 + 0.5 * rng.random())


def _error_body(error: urllib.error.HTTPError) -> str:
    """The first ERROR_BODY_BYTES of an error response, on one line ("" if unreadable)."""
    try:
        body = error.read(ERROR_BODY_BYTES + 1)
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return ""
    text = " ".join(body[:ERROR_BODY_BYTES].decode("utf-8", "replace").split())
    return text + ("..." if len(body) > ERROR_BODY_BYTES else "")


_HTTP_HINTS = {
    400: "NBIA answers 400 for a series that is not public or does not exist (it does not say which), and for a "
         "bad query; check the SeriesInstanceUID and that its collection is public on TCIA",
    401: "this needs a TCIA account; only public collections are supported",
    403: "this needs a TCIA account; only public collections are supported",
    404: "no such endpoint at this base URL; check --tcia_base_url (the v4 API root, ending in /v4/)",
}


def _http_error(error: urllib.error.HTTPError, url: str) -> Exception:
    status = error.code
    if status == 429 or 500 <= status <= 599:
        return _Retry(f"http_{status}", f"HTTP {status} from {url}", status, retry_after_s(error.headers.get("Retry-After")))
    body = _error_body(error)
    said = f"; the server said: {body!r}" if body else ""
    hint = _HTTP_HINTS.get(status)
    return ArchiveError(f"http_{status}", f"HTTP {status} from {url}{said}{'; ' + hint if hint else ''}", status)


@contextlib.contextmanager
def download_slot(limit: int, lock_dir: str, poll_s: float = 0.25) -> Iterator[None]:
    """Holds one of `limit` download slots shared by every thread and process of this machine
    that uses `lock_dir` (one lock file per slot, `flock`); waits while all are taken."""
    os.makedirs(lock_dir, exist_ok=True)
    rng = random.Random()
    while True:
        for index in range(limit):
            handle = open(os.path.join(lock_dir, f"slot-{index}.lock"), "ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_s * (0.5 + rng.random()))


def _with_retries(url: str, config: TciaConfig, consume: Callable[[http.client.HTTPResponse], T],
                  slot: Callable[[], ContextManager[None]] = contextlib.nullcontext) -> T:
    """GETs `url` and hands the response to `consume`, retrying what may pass on a later attempt.

    `consume` may raise `_Retry` (damaged content) or ArchiveError (final). Each attempt holds a
    `slot()` while its request runs; waits between attempts hold none.
    """
    rng = random.Random()
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    attempt = 0
    while True:
        attempt += 1
        try:
            try:
                with slot(), urllib.request.urlopen(request, timeout=config.timeout_s) as response:
                    return consume(response)
            except urllib.error.HTTPError as error:
                raise _http_error(error, url) from error
            except TimeoutError as error:
                raise _Retry("timeout", f"no answer from {url} within {config.timeout_s} s") from error
            except urllib.error.URLError as error:
                if isinstance(error.reason, TimeoutError):
                    raise _Retry("timeout", f"no answer from {url} within {config.timeout_s} s") from error
                raise _Retry("connection_error", f"{url}: {error.reason}") from error
            except (ConnectionError, http.client.HTTPException) as error:
                raise _Retry("connection_error", f"{url}: {type(error).__name__}: {error}") from error
        except _Retry as failure:
            if attempt >= config.max_attempts:
                exhausted = failure.reason + ("_exhausted" if failure.reason.startswith("http_") else "")
                raise ArchiveError(exhausted, f"{failure.detail} (gave up after {attempt} attempts)",
                                   failure.status) from failure
            wait = max(failure.wait_s, backoff_s(attempt, config, rng))
            LOG.info("%s; retry %d/%d in %.1f s", failure.detail, attempt, config.max_attempts - 1, wait)
            time.sleep(wait)


def _read_listing(response: http.client.HTTPResponse) -> Any:
    body = response.read(MAX_LISTING_BYTES + 1)
    if len(body) > MAX_LISTING_BYTES:
        raise ArchiveError("listing_too_large", f"{response.url} returned more than {MAX_LISTING_BYTES} bytes")
    if not body.strip():
        return []
    try:
        return json.loads(body)
    except ValueError as error:
        raise _Retry("bad_listing", f"{response.url} did not return JSON: {body[:120]!r}") from error


def _record(row: Any, collection: str) -> SeriesRecord:
    if not isinstance(row, dict) or not row.get("SeriesInstanceUID"):
        raise ArchiveError("bad_listing", f"getSeries for {collection} returned an entry without SeriesInstanceUID: {row!r:.200}")
    try:
        image_count = int(row["ImageCount"])
    except (KeyError, TypeError, ValueError) as error:
        raise ArchiveError("bad_listing", f"getSeries for {collection} gave series {row['SeriesInstanceUID']} without "
                                          f"a numeric ImageCount ({row.get('ImageCount')!r})") from error
    return SeriesRecord(
        series_uid=str(row["SeriesInstanceUID"]),
        patient_id=str(row.get("PatientID") or ""),
        collection=str(row.get("Collection") or collection),
        modality=str(row.get("Modality") or ""),
        image_count=image_count,
        description=str(row.get("SeriesDescription") or ""),
    )


def list_series(config: TciaConfig) -> SeriesListing:
    """Lists the CT series of every configured collection and applies the filters.

    Collections that list no series go to `unavailable`; raises ArchiveError(no_series) when none
    of them lists any, and the HTTP reasons when the listing itself cannot be fetched.
    """
    config.validate()
    records: list[SeriesRecord] = []
    unavailable: list[tuple[str, str]] = []
    for collection in collection_names(config.collections):
        query = urllib.parse.urlencode({"Collection": collection, "Modality": "CT"})
        url = urllib.parse.urljoin(config.base_url, f"getSeries?{query}")
        rows = _with_retries(url, config, _read_listing)
        if not isinstance(rows, list):
            raise ArchiveError("bad_listing", f"{url} returned {type(rows).__name__}, expected a JSON list")
        if not rows:
            unavailable.append((collection, f"TCIA lists no CT series for collection {collection!r} at {config.base_url}: "
                                            "check the name (exact TCIA spelling, e.g. CPTAC-LUAD)"))
        records.extend(_record(row, collection) for row in rows)
    if not records:
        raise ArchiveError("no_series", "; ".join(message for _, message in unavailable))
    kept, dropped = filter_series(records, config.series_filter)
    return SeriesListing(kept, dropped, tuple(unavailable))


def _image_url(series_uid: str, config: TciaConfig) -> str:
    if config.verify_md5:
        query = urllib.parse.urlencode({"SeriesInstanceUID": series_uid})
        return urllib.parse.urljoin(config.base_url, f"getImageWithMD5Hash?{query}")
    query = urllib.parse.urlencode({"NewFileNames": "Yes", "SeriesInstanceUID": series_uid})
    return urllib.parse.urljoin(config.base_url, f"getImage?{query}")


def _series_cache_dir(config: TciaConfig, series_uid: str) -> str:
    if "/" in series_uid or "\\" in series_uid or series_uid in ("", ".", ".."):
        raise ArchiveError("bad_series_uid", f"{series_uid!r} is not a SeriesInstanceUID")
    root = config.cache_dir if "://" in config.cache_dir else os.path.expanduser(config.cache_dir)
    return FileSystems.join(root.rstrip("/"), series_uid)


def cached_series(record: SeriesRecord, config: TciaConfig) -> list[str] | None:
    """Paths of a completely cached series, or None when it must be downloaded."""
    directory = _series_cache_dir(config, record.series_uid)
    marker = FileSystems.join(directory, COMPLETE_MARKER)
    if not FileSystems.exists(marker):
        return None
    with FileSystems.open(marker, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        entry = json.loads(handle.read())
    paths = [FileSystems.join(directory, *item["name"].split("/")) for item in entry["files"]]
    if "://" not in directory and not all(os.path.isfile(path) for path in paths):
        LOG.warning("cache entry %s lists files that are gone; downloading the series again", directory)
        return None
    return paths


def _download(response: http.client.HTTPResponse, zip_path: str, config: TciaConfig) -> None:
    """Streams the body to `zip_path`; damaged or short bodies raise _Retry.

    NBIA streams its zips without Content-Length, so `max_zip_bytes` is enforced on the bytes as
    they arrive; a Content-Length, when a server sends one, is only checked in addition.
    """
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > config.max_zip_bytes:
        raise ArchiveError("zip_too_large", f"{response.url} announces {declared} bytes, more than "
                                            f"max_zip_bytes={config.max_zip_bytes}")
    started, size = time.monotonic(), 0
    with open(zip_path, "wb") as sink:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except http.client.IncompleteRead as error:
                raise _Retry("truncated_download", f"{response.url}: the connection closed after "
                                                   f"{size + len(error.partial)} bytes, before the end of the zip") from error
            if not chunk:
                break
            size += len(chunk)
            if size > config.max_zip_bytes:
                raise ArchiveError("zip_too_large", f"{response.url} sent more than max_zip_bytes={config.max_zip_bytes}")
            if time.monotonic() - started > config.max_download_s:
                raise _Retry("timeout", f"{response.url} took longer than max_download_s={config.max_download_s}")
            sink.write(chunk)
    if declared and declared.isdigit() and size != int(declared):
        raise _Retry("truncated_download", f"{response.url} sent {size} of {declared} bytes")


def _md5_manifest(path: str, url: str) -> dict[str, str]:
    """{member name: md5 hex} from the archive's md5hashes.csv (columns Filename, MD5Hash)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "filename" not in header or "md5hash" not in header:
        raise ArchiveError("md5_mismatch", f"{url}: {MD5_MANIFEST} lacks the Filename and MD5Hash columns (header {header})")
    name_at, md5_at = header.index("filename"), header.index("md5hash")
    expected = {}
    for row in rows[1:]:
        if len(row) > max(name_at, md5_at) and row[name_at].strip():
            try:
                name = safe_member_name(row[name_at].strip(), f"{url}: {MD5_MANIFEST}")
            except CTInputError as error:
                raise ArchiveError(error.reason, error.detail) from error
            expected[name] = row[md5_at].strip().lower()
    return expected


def _content_fingerprint(files: list[ExtractedFile]) -> str:
    """A digest of what an archive held (member names and MD5s), to recognise the same archive."""
    digest = hashlib.sha256()
    for item in sorted(files, key=lambda f: f.name):
        digest.update(f"{item.name}\x1f{item.md5}\x1e".encode())
    return digest.hexdigest()


def _verify(files: list[ExtractedFile], scratch: str, record: SeriesRecord, config: TciaConfig, url: str) -> list[ExtractedFile]:
    """The series files (the archive's LICENSE and md5hashes.csv removed), checked against
    md5hashes.csv and the listing's image count. A short archive raises `_ShortArchive`."""
    series_files = [f for f in files if f.name not in ARCHIVE_MEMBERS]
    fingerprint = _content_fingerprint(files)
    if config.verify_md5:
        manifest = next((f for f in files if f.name == MD5_MANIFEST), None)
        if manifest is None:
            raise _ShortArchive(f"{url}: a complete zip without {MD5_MANIFEST}, {len(series_files)} of "
                                f"{record.image_count} images", fingerprint)
        expected = _md5_manifest(os.path.join(scratch, MD5_MANIFEST), url)
        actual = {f.name: f.md5 for f in series_files}
        missing = sorted(set(expected) - set(actual))
        if missing:
            raise _Retry("incomplete_series",
                         f"{url}: {len(missing)} files listed in {MD5_MANIFEST} are missing, e.g. {missing[0]}")
        wrong = sorted(name for name, md5 in expected.items() if actual[name] != md5)
        if wrong:
            raise _Retry("md5_mismatch", f"{url}: {len(wrong)} files differ from their published MD5, e.g. {wrong[0]}")
    if len(series_files) < record.image_count:
        raise _ShortArchive(f"{url}: {len(series_files)} of {record.image_count} images", fingerprint)
    return series_files


def _publish(series_files: list[ExtractedFile], scratch: str, directory: str, record: SeriesRecord, url: str) -> list[str]:
    """Moves (local) or uploads (remote) the files into the cache, then writes the marker."""
    paths = []
    for item in series_files:
        source = os.path.join(scratch, *item.name.split("/"))
        target = FileSystems.join(directory, *item.name.split("/"))
        if "://" in directory:
            with open(source, "rb") as reader, FileSystems.create(
                    target, compression_type=CompressionTypes.UNCOMPRESSED) as writer:
                shutil.copyfileobj(reader, writer, CHUNK_BYTES)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(source, target)
        paths.append(target)
    marker = {"series_uid": record.series_uid, "collection": record.collection, "source": url,
              "files": [dataclasses.asdict(item) for item in series_files]}
    marker_path = FileSystems.join(directory, COMPLETE_MARKER)
    if "://" not in directory:
        os.makedirs(directory, exist_ok=True)
        partial = f"{marker_path}.{uuid.uuid4().hex}.tmp"
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(marker, handle, indent=1)
        os.replace(partial, marker_path)
    else:
        with FileSystems.create(marker_path, compression_type=CompressionTypes.UNCOMPRESSED) as writer:
            writer.write(json.dumps(marker, indent=1).encode("utf-8"))
    return paths


def fetch_series(record: SeriesRecord, config: TciaConfig) -> list[str]:
    """Paths (under `cache_dir`, local or gs://) of the series' extracted files, downloading it
    unless the cache holds it complete. The files are the series' own as the archive sent them
    (never its LICENSE or md5hashes.csv): the pipeline decides which ones are CT slices.

    Raises ArchiveError (see the module docstring) when the series cannot be had.
    """
    config.validate()
    cached = cached_series(record, config)
    if cached is not None:
        return cached
    work_root = config.work_dir or os.path.join(tempfile.gettempdir(), "ctdeblur-tcia")
    os.makedirs(work_root, exist_ok=True)
    url = _image_url(record.series_uid, config)
    directory = _series_cache_dir(config, record.series_uid)
    short_archives: set[str] = set()

    def download_and_extract(response: http.client.HTTPResponse) -> list[str]:
        scratch = tempfile.mkdtemp(prefix=f"{hashlib.sha1(record.series_uid.encode()).hexdigest()[:12]}-", dir=work_root)
        try:
            zip_path = os.path.join(scratch, f"{record.series_uid}.zip")
            _download(response, zip_path, config)
            extracted_dir = os.path.join(scratch, "files")
            try:
                files = extract_zip(zip_path, extracted_dir, config.zip_limits)
            except CTInputError as error:
                if error.reason == "bad_zip":
                    raise _Retry("bad_zip", f"{url}: {error.detail}") from error
                raise ArchiveError(error.reason, error.detail) from error
            os.remove(zip_path)
            try:
                series_files = _verify(files, extracted_dir, record, config, url)
            except _ShortArchive as short:
                if short.fingerprint in short_archives:
                    raise ArchiveError("short_on_server", f"{short.detail}, the same archive twice: the series is "
                                       "short in TCIA's archive itself, not cut in transit, so downloading it again "
                                       "will not help; report the SeriesInstanceUID to TCIA") from short
                short_archives.add(short.fingerprint)
                raise
            return _publish(series_files, extracted_dir, directory, record, url)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def slot() -> ContextManager[None]:
        return download_slot(config.max_parallel_downloads, os.path.join(work_root, "download-slots"))

    return _with_retries(url, config, download_and_extract, slot)
