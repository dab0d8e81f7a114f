"""The Beam DoFns are thin shells over pure functions: each is run on a `TestPipeline` and its
outputs checked with `assert_that`, next to the pure function it maps."""

import hashlib
import io
import json

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import tfrecords_schema as schema
from pipeline.config import PRESETS, config_from_dict
from pipeline.pairs import shard_records
from pipeline.planning import InputFile, PairTask, Rejection, record_key
from pipeline.slice_scan import read_file_hu, scan_file
from pipeline.transforms import (
    REJECTED,
    AssembleSeriesFn,
    CountInputs,
    ScanSlicesFn,
    WriteDeadLetters,
    WriteShardFn,
)
from tests.conftest import dicom_bytes
from tests.ct_files import ct_slice, enhanced_ct

CONFIG = config_from_dict({**PRESETS["tiny"], "kernels_per_slice": 1})


def write_inputs(root):
    paths = {}
    for index in range(3):
        paths[f"s{index}"] = root / f"s{index}.dcm"
        paths[f"s{index}"].write_bytes(dicom_bytes(ct_slice(1, index)))
    paths["enhanced"] = root / "enhanced.dcm"
    paths["enhanced"].write_bytes(dicom_bytes(enhanced_ct(2, 2)))
    paths["text"] = root / "notes.txt"
    paths["text"].write_text("not DICOM\n" * 20)
    return {name: str(path) for name, path in paths.items()}


def test_scan_slices_gives_a_slice_per_frame_and_rejects_the_rest(tmp_path):
    paths = write_inputs(tmp_path)
    single_uid, enhanced_uid = str(ct_slice(1, 0).SeriesInstanceUID), str(enhanced_ct(2, 2).SeriesInstanceUID)
    with TestPipeline() as pipeline:
        scanned = (pipeline | beam.Create([InputFile(path, "C") for path in paths.values()])
                   | beam.ParDo(ScanSlicesFn(-500.0)).with_outputs(REJECTED, main="slices"))
        keys = scanned.slices | "Keys" >> beam.Map(lambda item: (item[0], item[1][1].path, item[1][1].frame_index))
        assert_that(keys, equal_to([(single_uid, paths[f"s{i}"], None) for i in range(3)]
                                   + [(enhanced_uid, paths["enhanced"], 0), (enhanced_uid, paths["enhanced"], 1)]))
        reasons = scanned[REJECTED] | "Reasons" >> beam.Map(lambda r: (r.path, r.reason, r.stage))
        assert_that(reasons, equal_to([(paths["text"], "not_dicom", "scan")]), label="rejections")


def test_assemble_series_orders_slices_along_the_normal(tmp_path):
    paths = write_inputs(tmp_path)
    members = [(InputFile(paths[f"s{i}"], "C"), scan_file(open(paths[f"s{i}"], "rb").read(), paths[f"s{i}"], -500.0)[0])
               for i in (2, 0, 1)]
    series_uid = members[0][1].series_uid
    with TestPipeline() as pipeline:
        assembled = (pipeline | beam.Create([(series_uid, members)])
                     | beam.ParDo(AssembleSeriesFn(config_from_dict({"min_body_fraction": 0.0}))).with_outputs(REJECTED, main="series"))
        order = assembled.series | beam.Map(lambda s: [h.position_mm for h in s.slices])
        assert_that(order, equal_to([[-5.0, -2.5, 0.0]]))


def tasks_of(paths, names):
    tasks = []
    for slice_index, name in enumerate(names):
        for header in scan_file(open(paths[name], "rb").read(), paths[name], -500.0):
            key = record_key(header.series_uid, slice_index + (header.frame_index or 0), 0)
            tasks.append(PairTask(key, "test", -1, 0, 0, slice_index, "C", "synthetic", header.patient_id, header))
    return tasks


def test_shard_records_are_the_encoded_tasks_in_key_order(tmp_path):
    paths = write_inputs(tmp_path)
    tasks = tasks_of(paths, ["s1", "enhanced", "s0"])

    def read_hu(path):
        return read_file_hu(open(path, "rb").read(), path)

    records, written, rejections = shard_records([None, *reversed(tasks)], CONFIG, read_hu, dict)
    assert [t.record_key for t in written] == sorted(t.record_key for t in tasks) and rejections == []
    pairs = [schema.decode_pair(record) for record in schema.read_records(io.BytesIO(b"".join(records)))]
    assert [p.record_key for p in pairs] == [t.record_key for t in written]
    enhanced = [p for p in pairs if p.sop_instance_uid == str(enhanced_ct(2, 2).SOPInstanceUID)]
    np.testing.assert_array_equal([p.sharp_hu for p in enhanced], read_hu(paths["enhanced"]).astype(np.int16))

    def unreadable(path):
        raise OSError(f"{path} vanished")

    records, written, rejections = shard_records(tasks, CONFIG, unreadable, dict)
    assert records == [] and written == []
    assert sorted(r.reason for r in rejections) == ["unreadable_file"] * 3


def test_write_shard_writes_what_shard_records_gives(tmp_path):
    (tmp_path / "in").mkdir()
    paths = write_inputs(tmp_path / "in")
    tasks = tasks_of(paths, ["s0", "s1"])
    records, _, _ = shard_records(tasks, CONFIG, lambda path: read_file_hu(open(path, "rb").read(), path), dict)
    expected = b"".join(records)
    uid = tasks[0].header.series_uid
    output = str(tmp_path / "ds")
    with TestPipeline() as pipeline:
        written = (pipeline | beam.Create([(("test", 0, 1), tasks)])
                   | beam.ParDo(WriteShardFn(CONFIG, output)).with_outputs(REJECTED, main="shards"))
        summary = written.shards | beam.Map(lambda info: (info["file"], info["pairs"], info["sha256"], info["slices"]))
        assert_that(summary, equal_to([("test/pairs-00000-of-00001.tfrecord", 2, hashlib.sha256(expected).hexdigest(),
                                        [f"{uid}/0", f"{uid}/1"])]))
    assert open(f"{output}/test/pairs-00000-of-00001.tfrecord", "rb").read() == expected


def test_count_inputs_counts_a_multiframe_file_once_and_its_frames_apart(tmp_path):
    paths = write_inputs(tmp_path)
    slices = [(header.series_uid, (InputFile(paths[name], "C"), header)) for name in ("s0", "s1", "enhanced")
              for header in scan_file(open(paths[name], "rb").read(), paths[name], -500.0)]
    source_rejections = [Rejection("gone.dcm", "download_failed", "HTTP 404", "fetch"),
                         Rejection("", "collection_unavailable", "no CT", "list", unit="series")]
    with TestPipeline() as pipeline:
        counts = {
            "files": pipeline | "Files" >> beam.Create([InputFile(path, "C") for path in paths.values()]),
            "source_rejections": pipeline | "SourceRejections" >> beam.Create(source_rejections),
            "slices": pipeline | "Slices" >> beam.Create(slices),
            "series": pipeline | "Series" >> beam.Create(["1.2.1", "1.2.2"]),
        } | CountInputs()
        expected = {"files": len(paths) + 1, "slices": 4, "frames": 2, "multiframe_files": 1, "series": 2}
        for name, count in expected.items():
            assert_that(counts[name], equal_to([count]), label=f"Check_{name}")


def test_write_dead_letters_sorts_problems_and_unselected_apart(tmp_path):
    rejections = [Rejection("b.dcm", "not_dicom", "text", "scan"), Rejection("a.dcm", "not_dicom", "text", "scan"),
                  Rejection("c.dcm", "low_body_fraction", "0.01", "assemble", unselected=True)]
    with TestPipeline() as pipeline:
        _ = pipeline | beam.Create(rejections) | WriteDeadLetters(str(tmp_path))
    problems = [json.loads(line) for line in (tmp_path / schema.DEAD_LETTER_NAME).read_text().splitlines()]
    unselected = [json.loads(line) for line in (tmp_path / schema.UNSELECTED_NAME).read_text().splitlines()]
    assert [row["path"] for row in problems] == ["a.dcm", "b.dcm"]
    assert unselected == [rejections[2].to_dict()]
