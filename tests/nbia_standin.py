"""A loopback stand-in for TCIA's NBIA REST API (v4), started by the tests.

A threaded `http.server` on 127.0.0.1 (random port) serving `getSeries`, `getImage` and
`getImageWithMD5Hash` over phantom DICOM series (real files from `pipeline.phantom`), with
faults injected per series UID:

- `503_once`: HTTP 503 on the first request, then the series;
- `429_retry_after`: HTTP 429 with `Retry-After: <retry_after_s>` first, then the series;
- `always_503`: HTTP 503 on every request;
- `truncated_zip`: a zip cut in half (served with a matching Content-Length);
- `zip_slip`: a zip with a `../` member and an absolute-path member;
- `non_dicom`: the series plus a text file that is no DICOM (extraction must succeed);
- `zip_bomb`: a member of zeros that inflates far beyond its compressed size;
- `md5_mismatch`: md5hashes.csv with a wrong hash for one file;
- `slow`: waits `slow_s` before answering (longer than the client's timeout);
- `404`: HTTP 404.

It counts requests per endpoint and per (endpoint, series UID).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.server
import io
import json
import sys
import threading
import urllib.parse
import zipfile

from pipeline.phantom import PhantomSeries, phantom_dataset, phantom_series

FAULTS = ("503_once", "429_retry_after", "always_503", "truncated_zip", "zip_slip", "non_dicom", "zip_bomb",
          "md5_mismatch", "slow", "404")
API_PREFIX = "/nbia-api/services/v4/"
NON_DICOM_NAME = "notes.txt"
ZIP_SLIP_NAMES = ("../../../../escaped-by-zip-slip.dcm", "/tmp/ctdeblur-absolute-zip-slip.dcm")


def _dicom_bytes(series: PhantomSeries, index: int) -> bytes:
    buffer = io.BytesIO()
    phantom_dataset(series, index).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclasses.dataclass
class StandinSeries:
    """One series the stand-in serves."""

    collection: str
    phantom: PhantomSeries
    description: str = "AXIAL 3mm"
    fault: str | None = None
    image_count: int | None = None
    """Count reported by getSeries (default: the real number of slices)."""

    @property
    def series_uid(self) -> str:
        return self.phantom.uid("series")

    def listing_row(self) -> dict:
        return {"SeriesInstanceUID": self.series_uid, "StudyInstanceUID": self.phantom.uid("study"),
                "PatientID": self.phantom.patient_id, "Collection": self.collection, "Modality": "CT",
                "SeriesDescription": self.description, "BodyPartExamined": self.phantom.body_site.upper(),
                "ImageCount": self.phantom.slices if self.image_count is None else self.image_count}


def phantom_standin_series(collection: str, patient_index: int, slices: int = 6, size: int = 64, seed: int = 0,
                           **kwargs) -> StandinSeries:
    return StandinSeries(collection, phantom_series(patient_index, slices, size, seed), **kwargs)


class _QuietServer(http.server.ThreadingHTTPServer):
    """Threads are daemons; a client that hung up (the timeout fault) is not an error."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class NbiaStandin:
    """Serve `series` until `stop()` (or the end of a `with` block); `base_url` is the v4 root."""

    def __init__(self, series: list[StandinSeries], retry_after_s: int = 1, slow_s: float = 3.0):
        for item in series:
            if item.fault is not None and item.fault not in FAULTS:
                raise ValueError(f"unknown fault {item.fault!r}; known: {FAULTS}")
        self.series = {item.series_uid: item for item in series}
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._zips: dict[tuple[str, bool], bytes] = {}
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{API_PREFIX}"

    def start(self) -> "NbiaStandin":
        """Builds every zip first (answers must not wait for phantom rendering), then serves."""
        for item in self.series.values():
            for with_md5 in (False, True):
                self.series_zip(item, with_md5)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "NbiaStandin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def hits(self, endpoint: str, series_uid: str | None = None) -> int:
        """Requests received for `endpoint` (e.g. 'getImageWithMD5Hash'), optionally for one series."""
        with self._lock:
            return self.counts[(endpoint, series_uid)] if series_uid else self.counts[(endpoint, None)]

    def _count(self, endpoint: str, series_uid: str | None) -> int:
        """Counts a request; returns how many requests this (endpoint, series) had before it."""
        with self._lock:
            self.counts[(endpoint, None)] += 1
            if series_uid:
                self.counts[(endpoint, series_uid)] += 1
                return self.counts[(endpoint, series_uid)] - 1
            return self.counts[(endpoint, None)] - 1

    def series_zip(self, item: StandinSeries, with_md5: bool) -> bytes:
        """The zip the archive would send for `item` (with its fault applied)."""
        key = (item.series_uid, with_md5)
        if key not in self._zips:
            self._zips[key] = self._build_zip(item, with_md5)
        return self._zips[key]

    def _build_zip(self, item: StandinSeries, with_md5: bool) -> bytes:
        members = []
        for index in range(item.phantom.slices):
            name = f"{index + 1:08d}.dcm" if with_md5 else f"1-{index + 1:03d}.dcm"
            members.append((name, _dicom_bytes(item.phantom, index)))
        if item.fault == "non_dicom":
            members.append((NON_DICOM_NAME, b"This archive also carries a note that is not DICOM.\n"))
        if item.fault == "zip_slip":
            members.extend((name, b"should never be written") for name in ZIP_SLIP_NAMES)
        if item.fault == "zip_bomb":
            members.append(("bomb.dcm", bytes(64 << 20)))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                archive.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 12, 0, 0)), data, compress_type=zipfile.ZIP_DEFLATED)
            if with_md5:
                rows = ["Filename,MD5Hash"]
                for position, (name, data) in enumerate(members):
                    digest = hashlib.md5(data).hexdigest()
                    if item.fault == "md5_mismatch" and position == 0:
                        digest = hashlib.md5(data + b"tampered").hexdigest()
                    rows.append(f"{name},{digest}")
                archive.writestr("md5hashes.csv", "\n".join(rows) + "\n")
        data = buffer.getvalue()
        return data[: len(data) // 2] if item.fault == "truncated_zip" else data

    def _handler_class(self):
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str = "text/plain",
                      headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                if not parsed.path.startswith(API_PREFIX):
                    standin._count("other", None)
                    return self._send(404, b"not found")
                endpoint = parsed.path[len(API_PREFIX):]
                query = urllib.parse.parse_qs(parsed.query)
                if endpoint == "getSeries":
                    standin._count(endpoint, None)
                    return self._get_series(query)
                if endpoint in ("getImage", "getImageWithMD5Hash"):
                    return self._get_image(endpoint, query)
                standin._count("other", None)
                return self._send(404, f"unknown endpoint {endpoint}".encode())

            def _get_series(self, query: dict) -> None:
                collection = query.get("Collection", [""])[0]
                modality = query.get("Modality", [""])[0]
                rows = [item.listing_row() for item in standin.series.values()
                        if item.collection == collection and modality in ("", "CT")]
                self._send(200, json.dumps(rows).encode() if rows else b"", "application/json")

            def _get_image(self, endpoint: str, query: dict) -> None:
                with_md5 = endpoint == "getImageWithMD5Hash"
                allowed = {"SeriesInstanceUID"} if with_md5 else {"SeriesInstanceUID", "NewFileNames"}
                uid = query.get("SeriesInstanceUID", [""])[0]
                previous = standin._count(endpoint, uid or None)
                if set(query) - allowed or not uid:
                    return self._send(400, f"Invalid query parameters: allowed are {sorted(allowed)}".encode())
                item = standin.series.get(uid)
                if item is None or item.fault == "404":
                    return self._send(404, b"")
                if item.fault == "slow":
                    standin._stopping.wait(standin.slow_s)
                if item.fault == "always_503" or (item.fault == "503_once" and previous == 0):
                    return self._send(503, b"Service Unavailable")
                if item.fault == "429_retry_after" and previous == 0:
                    return self._send(429, b"Too Many Requests", headers={"Retry-After": str(standin.retry_after_s)})
                body = standin.series_zip(item, with_md5)
                self._send(200, body, "application/octet-stream",
                           {"Content-Disposition": f'attachment; filename="{uid}.zip"'})

        return Handler
