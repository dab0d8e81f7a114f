"""Real archive sources and registered pairs: the pure and I/O-edge parts the pipeline maps.

- `tcia`: TCIA's NBIA REST API (v4): list CT series of collections, download a series (retries,
  cache, MD5 check, safe extraction, a per-machine cap on parallel downloads), as the real server
  behaves (streamed zips, LICENSE entries, HTTP 400 for series that are not public).
- `idc`: NCI Imaging Data Commons: list CT series from the offline index in idc-index-data, list
  a series' files in the public bucket (or a mirror given as the bucket root).
- `registration`: free-breathing CT registered onto breath-hold CT with SimpleITK, and the quality
  gate that rejects poor pairs.
- `series`: what they share: `SeriesRecord`, `SeriesFilter` / `filter_series`, `SeriesListing`,
  `ArchiveError`.

Series zips are extracted by `ct_io.zips` (zip-slip and size-bomb checks).

Submodules are imported by name (`from pipeline.archives.tcia import fetch_series`), so using one
does not load the others' dependencies (SimpleITK, pyarrow, idc-index-data).
"""
