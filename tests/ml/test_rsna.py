"""The RSNA reader: labels CSV, image index, patient split, series grouping."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from ml.labels import LABELS
from ml.phantom import write_series
from ml.rsna import ImageRecord, group_series, index_images, read_labels, split_by_patient

CSV = """ID,Label
ID_000aaa111_epidural,0
ID_000aaa111_intraparenchymal,0
ID_000aaa111_intraventricular,0
ID_000aaa111_subarachnoid,1
ID_000aaa111_subdural,1
ID_000aaa111_any,1
ID_000bbb222_any,0
ID_000bbb222_subdural,0
ID_000bbb222_subarachnoid,0
ID_000bbb222_epidural,0
ID_000bbb222_intraventricular,0
ID_000bbb222_subdural,0
ID_000bbb222_intraparenchymal,0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_read_labels_any_row_order_and_duplicates(tmp_path: Path) -> None:
    labels = read_labels(write(tmp_path, CSV))
    assert set(labels) == {"ID_000aaa111", "ID_000bbb222"}
    assert labels["ID_000aaa111"].dtype == np.uint8
    assert labels["ID_000aaa111"].tolist() == [1, 0, 0, 0, 1, 1]  # LABELS order
    assert labels["ID_000bbb222"].tolist() == [0] * 6
    assert LABELS[4] == "subarachnoid"


def test_read_labels_malformed_row_names_the_line(tmp_path: Path) -> None:
    broken = CSV.replace("ID_000aaa111_intraventricular,0", "ID_000aaa111_intraventricular;0")
    with pytest.raises(ValueError, match=r"labels\.csv:4:"):
        read_labels(write(tmp_path, broken))
    with pytest.raises(ValueError, match=r":5: .*'ID_000aaa111_stroke'"):
        read_labels(write(tmp_path, CSV.replace("_subarachnoid,1", "_stroke,1", 1)))
    with pytest.raises(ValueError, match=r":2: label '2'"):
        read_labels(write(tmp_path, CSV.replace("_epidural,0", "_epidural,2", 1)))


def test_read_labels_conflicts_and_gaps(tmp_path: Path) -> None:
    conflicting = CSV + "ID_000aaa111_any,0\n"
    with pytest.raises(ValueError, match="ID_000aaa111 any is 0 here but 1 earlier"):
        read_labels(write(tmp_path, conflicting))
    incomplete = "\n".join(line for line in CSV.splitlines() if line != "ID_000bbb222_epidural,0")
    with pytest.raises(ValueError, match="ID_000bbb222 has no label for epidural"):
        read_labels(write(tmp_path, incomplete))


def test_index_images_reads_headers_and_skips_bad_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = write_series(
        tmp_path / "s", seed=5, slices=4, size=64, image_ids=True, patient_id="P5"
    )
    labels = {p.stem: series.labels[i] for i, p in enumerate(series.paths)}
    (tmp_path / "s" / "ID_badbadbad.dcm").write_bytes(b"garbage" * 50)
    labels["ID_badbadbad"] = np.zeros(6, np.uint8)
    (tmp_path / "s" / "ID_unlabeled.dcm").write_bytes(series.paths[0].read_bytes())
    with caplog.at_level(logging.WARNING, logger="ml.rsna"):
        records = index_images(tmp_path, labels)
    assert "skipped 1 unreadable file" in caplog.text
    assert sorted(r.image_id for r in records) == sorted(p.stem for p in series.paths)
    by_id = {r.image_id: r for r in records}
    for i, path in enumerate(series.paths):
        record = by_id[path.stem]
        assert record.path == path
        assert (record.patient_id, record.study_uid, record.series_uid) == (
            "P5",
            series.study_uid,
            series.series_uid,
        )
        assert record.instance_number == i + 1
        np.testing.assert_array_equal(record.labels, series.labels[i])
    positions = [by_id[p.stem].position for p in series.paths]
    assert positions == sorted(positions) and len(set(positions)) == 4


def record(
    patient: str, series: str, position: float, *, positive: bool = False, number: int | None = None
) -> ImageRecord:
    labels = np.zeros(6, np.uint8)
    labels[[0, 5]] = int(positive)
    return ImageRecord(
        image_id=f"ID_{patient}_{series}_{position}_{number}", path=Path("x.dcm"), patient_id=patient,
        study_uid=f"study-{patient}", series_uid=series, position=position, labels=labels, instance_number=number,
    )  # fmt: skip


def cohort() -> list[ImageRecord]:
    records = []
    for p in range(30):
        for s in range(2):
            for z in range(5):
                records.append(
                    record(f"P{p:02d}", f"P{p:02d}-{s}", float(z), positive=(p % 3 == 0 and z == 2))
                )
    return records


def test_split_by_patient_keeps_patients_whole_and_is_deterministic() -> None:
    records = cohort()
    train, val = split_by_patient(records, val_fraction=0.2, seed=1)
    assert len(train) + len(val) == len(records)
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    assert len({r.patient_id for r in val}) == 6
    assert any(r.labels[0] for r in train) and any(r.labels[0] for r in val)
    again = split_by_patient(records, val_fraction=0.2, seed=1)
    assert [r.image_id for r in again[1]] == [r.image_id for r in val]
    other = split_by_patient(records, val_fraction=0.2, seed=2)
    assert {r.patient_id for r in other[1]} != {r.patient_id for r in val}


def test_split_puts_positives_on_both_sides_when_few() -> None:
    records = [record("A", "a", 0, positive=True), record("B", "b", 0, positive=True)]
    records += [record(f"N{i}", f"n{i}", 0) for i in range(8)]
    for seed in range(5):
        train, val = split_by_patient(records, val_fraction=0.1, seed=seed)
        assert any(r.labels[0] for r in train) and any(r.labels[0] for r in val)


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(cohort(), val_fraction=1.0, seed=0)


def test_group_series_sorts_by_position_then_instance_number() -> None:
    shuffled = [record("A", "s1", 10.0), record("A", "s2", math.nan, number=3), record("A", "s1", -5.0),
                record("A", "s2", math.nan, number=1), record("A", "s1", 2.5), record("A", "s2", math.nan, number=2)]  # fmt: skip
    groups = group_series(shuffled)
    assert [[r.series_uid for r in g] for g in groups] == [["s1"] * 3, ["s2"] * 3]
    assert [r.position for r in groups[0]] == [-5.0, 2.5, 10.0]
    assert [r.instance_number for r in groups[1]] == [1, 2, 3]


def test_labelled_ids_without_a_file_are_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = write_series(tmp_path / "s", seed=6, slices=3, size=64, image_ids=True)
    labels = {p.stem: series.labels[i] for i, p in enumerate(series.paths)}
    with caplog.at_level(logging.WARNING, logger="ml.rsna"):
        assert len(index_images(tmp_path, labels)) == 3
    assert caplog.records == []  # every labelled ID has its file: nothing to say
    labels.update({f"ID_nofile{n}": np.zeros(6, np.uint8) for n in range(4)})
    with caplog.at_level(logging.WARNING, logger="ml.rsna"):
        assert len(index_images(tmp_path, labels)) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"labels: 4 of 7 labelled image IDs have no <ID>.dcm under {tmp_path} and are left "
        "out (first: ID_nofile0, ID_nofile1, ID_nofile2)"]
