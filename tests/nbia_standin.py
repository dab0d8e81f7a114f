"""A loopback stand-in for TCIA's NBIA REST API (v4), started by the tests.

A threaded `http.server` on 127.0.0.1 (random port) serving `getSeries`, `getImage` and
`getImageWithMD5Hash` over phantom DICOM series (real files from `pipeline.phantom`). It copies
what the real server does, as read in its source (CBIIT/NBIA-TCIA, `software/nbia-api/src/gov/
nih/nci/nbia/restAPI/v4/`: `V4_getSeries`, `V4_getImage`, `V4_getImageWithMD5Hash`, `getData`,
`restUtil/FormatOutput`) and in TCIA's own client (kirbyju/tcia_utils, `nbia.py`):

- `getSeries?Collection=..&Modality=..`: a JSON list with V4_getSeries' columns (a column whose
  value is null is left out, as jettison's JSONObject does); no match: HTTP 200, empty body.
- Both zip endpoints stream the zip (`StreamingOutput`): HTTP 200, `application/octet-stream`,
  `Content-Disposition: attachment; filename="<uid>.zip"`, chunked transfer encoding and **no
  Content-Length**. The zip is written as a stream (entries with data descriptors).
- `getImage` zips start with a `LICENSE` entry (the collection's licence text), then the images
  as `00000001.dcm`, ... or, with `NewFileNames=Yes` (any case), as `1-001.dcm`, ...
- `getImageWithMD5Hash` zips hold `00000001.dcm`, ... then `md5hashes.csv`: header
  `Filename,MD5Hash`, one unquoted `name,md5` row per image in hash-map order (not sorted).
- A query parameter other than the endpoint's → HTTP 400 `Invalid query parameter: '<p>'.
  Allowed parameters are: [..]`; no SeriesInstanceUID → HTTP 400; a series that is unknown or
  not public → HTTP 400 "The user has not been granted the access to image with given
  SeriesInstanceUID,<uid>. Please contact System Admin to resolve this issue." (not 401/403/404).
  An unknown path → HTTP 404.
- A series broken on the server (an image file missing on its disk): the servlet catches the
  error and closes the zip, so the client gets a well-formed, short zip: the images before the
  missing one and, for getImageWithMD5Hash, no md5hashes.csv. Every request gets the same bytes.

Faults injected per series UID (the first three come from the load balancer in front of the
server, the last four are hostile or damaged archives that the client must survive):

- `not_public`: HTTP 400 with the text above, as for a series that is not public;
- `missing_on_server`: image 4 of the series is missing on the server's disk (see above);
- `cut_stream`: the connection closes halfway through the zip, without the closing chunk;
- `slow`: waits `slow_s` before answering (longer than the client's timeout);
- `503_once`: HTTP 503 on the first request, then the series;
- `429_retry_after`: HTTP 429 with `Retry-After: <retry_after_s>` first, then the series;
- `always_503`: HTTP 503 on every request;
- `zip_slip`: a zip with a `../` member and an absolute-path member;
- `non_dicom`: the series plus a text file that is no DICOM (extraction must succeed);
- `zip_bomb`: a member of zeros that inflates far beyond its compressed size;
- `md5_mismatch`: md5hashes.csv with a wrong hash for one file.

It counts requests per endpoint and per (endpoint, series UID), and the most zip downloads it
served at the same time (`max_parallel_downloads`); `image_delay_s` holds every zip answer that
long, so parallel downloads overlap.
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
import time
import urllib.parse
import zipfile

from pipeline.phantom import PhantomSeries, phantom_dataset, phantom_series

FAULTS = ("not_public", "missing_on_server", "cut_stream", "slow", "503_once", "429_retry_after", "always_503",
          "zip_slip", "non_dicom", "zip_bomb", "md5_mismatch")
API_PREFIX = "/nbia-api/services/v4/"
NON_DICOM_NAME = "notes.txt"
ZIP_SLIP_NAMES = ("../../../../escaped-by-zip-slip.dcm", "/tmp/ctdeblur-absolute-zip-slip.dcm")
LICENSE_TEXT = ("Creative Commons Attribution 4.0 International License (CC BY 4.0)\n"
                "https://creativecommons.org/licenses/by/4.0/\n")
MISSING_ON_SERVER_AT = 3
"""0-based index of the image whose file is missing on the server (`missing_on_server`)."""
NOT_GRANTED = ("The user has not been granted the access to image with given SeriesInstanceUID,{uid}. "
               "Please contact System Admin to resolve this issue.")
ALLOWED_PARAMETERS = {"getImage": ("SeriesInstanceUID", "NewFileNames"),
                      "getImageWithMD5Hash": ("SeriesInstanceUID",)}
STREAM_CHUNK_BYTES = 8192


def _dicom_bytes(series: PhantomSeries, index: int) -> bytes:
    buffer = io.BytesIO()
    phantom_dataset(series, index).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class _Unseekable(io.RawIOBase):
    """A write-only stream without seek/tell, so zipfile writes it as a servlet's ZipOutputStream
    does (local headers first, sizes in data descriptors after each entry)."""

    def __init__(self):
        super().__init__()
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        return len(data)


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
        """A row of getSeries' JSON, columns as V4_getSeries names them (None values left out)."""
        row = {"SeriesInstanceUID": self.series_uid, "StudyInstanceUID": self.phantom.uid("study"), "Modality": "CT",
               "ProtocolName": None, "SeriesDate": "2024-01-01 00:00:00.0", "SeriesDescription": self.description,
               "BodyPartExamined": self.phantom.body_site.upper(), "SeriesNumber": 2, "AnnotationsFlag": None,
               "Collection": self.collection, "PatientID": self.phantom.patient_id, "Manufacturer": "PHANTOM",
               "ManufacturerModelName": "ctdeblur", "SoftwareVersions": None,
               "ImageCount": self.phantom.slices if self.image_count is None else self.image_count,
               "TimeStamp": "2024-01-02 00:00:00.0", "LicenseName": "CC BY 4.0",
               "LicenseURI": "https://creativecommons.org/licenses/by/4.0/", "CollectionURI": None,
               "FileSize": 0, "DateReleased": "2024-01-02 00:00:00.0", "StudyDesc": "CT", "StudyDate": "2024-01-01",
               "ThirdPartyAnalysis": "NO", "Authorized": 1}
        return {name: value for name, value in row.items() if value is not None}


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

    def __init__(self, series: list[StandinSeries], retry_after_s: int = 1, slow_s: float = 3.0,
                 image_delay_s: float = 0.0):
        for item in series:
            if item.fault is not None and item.fault not in FAULTS:
                raise ValueError(f"unknown fault {item.fault!r}; known: {FAULTS}")
        self.series = {item.series_uid: item for item in series}
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.image_delay_s = image_delay_s
        self.counts: collections.Counter = collections.Counter()
        self.max_parallel_downloads = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._zips: dict[tuple[str, str], bytes] = {}
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{API_PREFIX}"

    def start(self) -> "NbiaStandin":
        """Builds every zip first (answers must not wait for phantom rendering), then serves."""
        for item in self.series.values():
            for layout in ("md5", "plain", "new_names"):
                self.series_zip(item, layout)
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

    def _download_started(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_parallel_downloads = max(self.max_parallel_downloads, self._in_flight)

    def _download_ended(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def series_zip(self, item: StandinSeries, layout: str) -> bytes:
        """The zip the archive sends for `item`: layout `md5` (getImageWithMD5Hash), `plain`
        (getImage) or `new_names` (getImage?NewFileNames=Yes), with its fault applied."""
        key = (item.series_uid, layout)
        if key not in self._zips:
            self._zips[key] = self._build_zip(item, layout)
        return self._zips[key]

    def _build_zip(self, item: StandinSeries, layout: str) -> bytes:
        images = []
        for index in range(item.phantom.slices):
            if item.fault == "missing_on_server" and index == MISSING_ON_SERVER_AT:
                break
            name = f"1-{index + 1:03d}.dcm" if layout == "new_names" else f"{index + 1:08d}.dcm"
            images.append((name, _dicom_bytes(item.phantom, index)))
        if item.fault == "non_dicom":
            images.append((NON_DICOM_NAME, b"This archive also carries a note that is not DICOM.\n"))
        if item.fault == "zip_slip":
            images.extend((name, b"should never be written") for name in ZIP_SLIP_NAMES)
        if item.fault == "zip_bomb":
            images.append(("bomb.dcm", bytes(64 << 20)))
        members = [] if layout == "md5" else [("LICENSE", LICENSE_TEXT.encode())]
        members += images
        if layout == "md5" and item.fault != "missing_on_server":
            digests = {name: hashlib.md5(data).hexdigest() for name, data in images}
            if item.fault == "md5_mismatch":
                first = images[0][0]
                digests[first] = hashlib.md5(images[0][1] + b"tampered").hexdigest()
            rows = sorted(digests.items(), key=lambda row: hashlib.sha1(row[0].encode()).digest())
            members.append(("md5hashes.csv", ("Filename,MD5Hash\n" + "".join(f"{n},{d}\n" for n, d in rows)).encode()))
        stream = _Unseekable()
        with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                with archive.open(zipfile.ZipInfo(name, (2024, 1, 1, 12, 0, 0)), "w") as entry:
                    entry.write(data)
        return bytes(stream.buffer)

    def _handler_class(self):
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str | None = "text/plain",
                      headers: dict | None = None) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, uid: str, body: bytes, cut: bool) -> None:
                """Sends `body` as a chunked stream without Content-Length; `cut` drops the
                connection halfway, before the closing chunk."""
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Disposition", f'attachment; filename="{uid}.zip"')
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                end = len(body) // 2 if cut else len(body)
                for start in range(0, end, STREAM_CHUNK_BYTES):
                    chunk = body[start:min(start + STREAM_CHUNK_BYTES, end)]
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                if cut:
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n\r\n")

            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                if not parsed.path.startswith(API_PREFIX):
                    standin._count("other", None)
                    return self._send(404, b"Not Found")
                endpoint = parsed.path[len(API_PREFIX):]
                query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
                if endpoint == "getSeries":
                    standin._count(endpoint, None)
                    return self._get_series(query)
                if endpoint in ALLOWED_PARAMETERS:
                    return self._get_image(endpoint, query)
                standin._count("other", None)
                return self._send(404, b"Not Found")

            def _get_series(self, query: dict) -> None:
                collection = query.get("Collection", [""])[0]
                modality = query.get("Modality", [""])[0]
                rows = [item.listing_row() for item in standin.series.values()
                        if item.collection == collection and modality in ("", "CT")]
                if not rows:
                    return self._send(200, b"", None)
                self._send(200, json.dumps(rows).encode(), "application/json")

            def _get_image(self, endpoint: str, query: dict) -> None:
                allowed = ALLOWED_PARAMETERS[endpoint]
                uid = query.get("SeriesInstanceUID", [""])[0]
                previous = standin._count(endpoint, uid or None)
                for parameter in query:
                    if parameter not in allowed:
                        return self._send(400, f"Invalid query parameter: '{parameter}'. Allowed parameters are: "
                                               f"[{', '.join(allowed)}]".encode(), None)
                if "SeriesInstanceUID" not in query:
                    return self._send(400, b"A parameter, SeriesInstanceUID, is required for this API call.",
                                      "application/json")
                item = standin.series.get(uid)
                if item is None or item.fault == "not_public":
                    return self._send(400, NOT_GRANTED.format(uid=uid).encode(), "application/json")
                if item.fault == "slow":
                    standin._stopping.wait(standin.slow_s)
                if item.fault == "always_503" or (item.fault == "503_once" and previous == 0):
                    return self._send(503, b"Service Unavailable")
                if item.fault == "429_retry_after" and previous == 0:
                    return self._send(429, b"Too Many Requests", headers={"Retry-After": str(standin.retry_after_s)})
                if endpoint == "getImageWithMD5Hash":
                    layout = "md5"
                else:
                    layout = "new_names" if query.get("NewFileNames", [""])[0].lower() == "yes" else "plain"
                standin._download_started()
                try:
                    if standin.image_delay_s:
                        time.sleep(standin.image_delay_s)
                    self._stream(uid, standin.series_zip(item, layout), cut=item.fault == "cut_stream")
                finally:
                    standin._download_ended()

        return Handler
