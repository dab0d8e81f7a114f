import collections

import pytest

from pipeline.config import config_from_dict
from pipeline.slice_scan import SliceHeader
from pipeline.planning import (
    InputFile,
    assemble_series,
    evenly_spaced,
    make_plan,
    pair_tasks,
    series_summary,
)


def header(path, sop, position, rows=64, body=0.5, patient="P1", series="S1"):
    return SliceHeader(path, series, sop, patient, rows, rows, (1.0, 1.0), 2.0, position, None, body)


def member(path, sop, position, **kwargs):
    return InputFile(path, "c"), header(path, sop, position, **kwargs)


def test_assembly_orders_by_position_and_drops_duplicates():
    members = [member("b", "2", 10.0), member("a", "1", 20.0), member("c", "2", 10.0), member("d", "3", -5.0)]
    series, rejections = assemble_series("S1", members, 0.1)
    assert [h.sop_instance_uid for h in series.slices] == ["3", "2", "1"]
    assert [(r.path, r.reason) for r in rejections] == [("c", "duplicate_sop_instance")]


def test_mixed_sizes_reject_every_slice_and_low_body_is_unselected():
    series, rejections = assemble_series("S1", [member("a", "1", 0.0), member("b", "2", 1.0, rows=32)], 0.1)
    assert series is None and sorted(r.reason for r in rejections) == ["mixed_matrix_sizes"] * 2
    series, rejections = assemble_series("S1", [member("a", "1", 0.0, body=0.05), member("b", "2", 1.0)], 0.1)
    assert series.eligible == (1,)
    assert rejections[0].reason == "low_body_fraction" and rejections[0].unselected


def test_evenly_spaced_covers_the_series():
    assert evenly_spaced(10, 5) == [1, 3, 5, 7, 9]
    assert evenly_spaced(7, 7) == list(range(7))
    assert evenly_spaced(9, 0) == []
    with pytest.raises(ValueError):
        evenly_spaced(3, 4)


def build_series(patients=8, per_patient=2, slices=30):
    all_series = []
    for p in range(patients):
        for s in range(per_patient):
            uid = f"1.{p}.{s}"
            members = [member(f"{uid}/{i}", f"{uid}.{i}", float(i), patient=f"P{p}", series=uid) for i in range(slices)]
            all_series.append(assemble_series(uid, members, 0.1)[0])
    return all_series


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_gives_exact_counts_disjoint_patients_and_balanced_subdatasets(seed):
    config = config_from_dict({"seed": seed, "target_pairs": 200, "test_pairs": 30, "subdatasets": 7, "pairs_per_shard": 8})
    series = build_series()
    plan = make_plan([series_summary(s, config.patient_salt) for s in series], config)
    tasks = [t for s in series for t in pair_tasks(s, plan, config)[0]]
    per_split = collections.Counter(t.split_dir for t in tasks)
    assert per_split["test"] == 30
    assert sum(per_split.values()) == 200
    train_counts = [per_split[f"train-{i}"] for i in range(7)]
    assert max(train_counts) - min(train_counts) <= 1
    assert dict(per_split) == {k: v for k, v in plan.pairs_per_split.items() if v}
    test_patients = {t.patient_id for t in tasks if t.split == "test"}
    train_patients = {t.patient_id for t in tasks if t.split == "train"}
    assert test_patients and not test_patients & train_patients
    assert all(0 <= t.shard < plan.shards_per_split[t.split_dir] for t in tasks)
    assert len({t.record_key for t in tasks}) == 200


def test_plan_is_independent_of_input_order_and_warns_on_shortfall():
    config = config_from_dict({"target_pairs": 1000, "test_pairs": 30})
    series = build_series(patients=3)
    summaries = [series_summary(s, config.patient_salt) for s in series]
    assert make_plan(summaries, config) == make_plan(list(reversed(summaries)), config)
    assert any("not enough eligible" in w for w in make_plan(summaries, config).warnings)
    one = build_series(patients=1, per_patient=1)
    plan = make_plan([series_summary(one[0], config.patient_salt)], config)
    assert plan.test_patients == 0 and any("needs >= 2 patients" in w for w in plan.warnings)


def test_validation_split_is_patient_disjoint_and_leaves_test_and_train_as_they_were():
    base = {"seed": 3, "target_pairs": 200, "test_pairs": 30, "subdatasets": 7, "pairs_per_shard": 8}
    series = build_series()
    without = config_from_dict(base)
    plan = make_plan([series_summary(s, without.patient_salt) for s in series], without)
    assert "validation" not in plan.pairs_per_split and plan.validation_patients == 0
    config = config_from_dict({**base, "validation_pairs": 40})
    plan = make_plan([series_summary(s, config.patient_salt) for s in series], config)
    tasks = [t for s in series for t in pair_tasks(s, plan, config)[0]]
    per_split = collections.Counter(t.split_dir for t in tasks)
    assert per_split["test"] == 30 and per_split["validation"] == 40 and sum(per_split.values()) == 200
    assert plan.pairs_per_split["validation"] == 40 and plan.validation_patients == 1
    patients = {split: {t.patient_id for t in tasks if t.split == split} for split in ("test", "validation", "train")}
    assert all(patients.values())
    assert not (patients["test"] & patients["validation"] or patients["test"] & patients["train"]
                or patients["validation"] & patients["train"])
    assert all(t.subdataset == -1 for t in tasks if t.split == "validation")
    plain = [t for s in series for t in pair_tasks(s, make_plan(
        [series_summary(s, without.patient_salt) for s in series], without), without)[0]]
    assert {t.patient_id for t in plain if t.split == "test"} == patients["test"]


def test_validation_split_needs_a_patient_of_its_own():
    config = config_from_dict({"target_pairs": 60, "test_pairs": 20, "validation_pairs": 20})
    series = build_series(patients=2)
    plan = make_plan([series_summary(s, config.patient_salt) for s in series], config)
    assert plan.test_patients == 1 and plan.validation_patients == 0 and plan.train_patients == 1
    assert any("validation split is empty" in w for w in plan.warnings)
    with pytest.raises(ValueError, match="validation_pairs"):
        config_from_dict({"target_pairs": 60, "test_pairs": 40, "validation_pairs": 40})
