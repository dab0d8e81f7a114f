"""The one definition of a ctdeblur blur-sharp pair on disk.

Imported by `pipeline` (writer) and `model` (reader); imports neither.
"""

from tfrecords_schema.layout import (
    COMPRESSIONS,
    DEAD_LETTER_NAME,
    MANIFEST_NAME,
    TEST_DIR,
    UNSELECTED_NAME,
    VALIDATION_DIR,
    shard_name,
    split_dir,
    tf_compression_type,
    train_dir,
)
from tfrecords_schema.pair import (
    BLUR_MODELS,
    FEATURE_SPEC,
    MOTION_PARAM_NAMES,
    NOISE_PARAM_NAMES,
    PROJECTION_PARAM_NAMES,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    SOURCE_KINDS,
    SPLITS,
    Pair,
    PairDecodeError,
    SchemaVersionError,
    check_schema_version,
    decode_pair,
    encode_pair,
    parse_pair_tensors,
)
from tfrecords_schema.tfrecord import (
    TFRecordCorruptionError,
    frame_record,
    read_records,
    write_records,
)

__all__ = [
    "BLUR_MODELS",
    "COMPRESSIONS",
    "DEAD_LETTER_NAME",
    "FEATURE_SPEC",
    "MANIFEST_NAME",
    "MOTION_PARAM_NAMES",
    "NOISE_PARAM_NAMES",
    "PROJECTION_PARAM_NAMES",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "SOURCE_KINDS",
    "SPLITS",
    "TEST_DIR",
    "UNSELECTED_NAME",
    "VALIDATION_DIR",
    "Pair",
    "PairDecodeError",
    "SchemaVersionError",
    "TFRecordCorruptionError",
    "check_schema_version",
    "decode_pair",
    "encode_pair",
    "frame_record",
    "parse_pair_tensors",
    "read_records",
    "shard_name",
    "split_dir",
    "tf_compression_type",
    "train_dir",
    "write_records",
]
