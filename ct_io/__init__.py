"""The one way to read CT: a shared layer beside `tfrecords_schema/`, under `pipeline/` and
`model/`, importing nothing of ours.

- `hu`: stored values <-> Hounsfield units, pixel padding, the air rule (pure numpy).
- `dicom`: parse a DICOM object, why it is no CT image (`skip_reason`), the frames of single-
  and multi-frame CT with their geometry and rescale, their HU; `CTInputError` with a stable
  reason code.
- `series`: position along the slice normal, slice order, consistency of a series.
- `zips`: zip archives that trust nothing: safe extraction to disk, bounded reading in memory.

Submodules are imported by name (`from ct_io.hu import AIR_HU`): `ct_io.hu` and `ct_io.series`
need only numpy, so pure maths can use them without pydicom.
"""
