"""The worklist ranks likely bleeds first, then by arrival; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, select, update

from ml.labels import LABELS
from storage.files import FileStore
from storage.instances import InstanceMeta, InstanceStore
from storage.models import Series, SeriesStatus
from storage.results import NewResult, Results
from storage.worklist import worklist

CT = "1.2.840.10008.5.1.4.1.1.2"


def _study(store: InstanceStore, n: int, name: str) -> int:
    store.store(InstanceMeta(sop_class_uid=CT, sop_uid=f"1.2.{n}.1.1", study_uid=f"1.2.{n}",
                             series_uid=f"1.2.{n}.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
                             patient_name=name, patient_id=f"P{n}", modality="CT"), [b"x"])
    with store.engine.connect() as conn:
        return int(conn.execute(select(Series.id).where(Series.series_uid == f"1.2.{n}.1"))
                   .scalar_one())


def _result(engine: Engine, series_pk: int, p_any: float, positive: bool, *,
            complete: bool = True, notes: str = "") -> None:
    probs = dict.fromkeys(LABELS, 0.01) | {"any": p_any, "subdural": p_any}
    calls = dict.fromkeys(LABELS, False) | {"any": positive, "subdural": positive}
    with engine.begin() as conn:
        Results.add(conn, NewResult(series_pk, None, 1, "ichnet_seq", "abc123", probs, calls,
                                    [], "1.2.999", 3.2, complete=complete, notes=notes))
    Results(engine).set_series_status(series_pk, SeriesStatus.DONE)


def test_positive_studies_first_most_probable_first(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path))
    negative = _study(store, 1, "A^NEG")
    likely = _study(store, 2, "B^POS")
    surest = _study(store, 3, "C^POS")
    skipped = _study(store, 4, "D^MR")
    _study(store, 5, "E^WAITING")
    _result(engine, negative, 0.10, False)
    _result(engine, likely, 0.80, True)
    _result(engine, surest, 0.95, True)
    with engine.begin() as conn:
        conn.execute(update(Series).where(Series.id == skipped).values(
            status=SeriesStatus.NOT_ELIGIBLE, status_reason="modality MR is not CT"))
    entries = worklist(engine)
    assert [e.patient_name for e in entries] == ["C^POS", "B^POS", "A^NEG", "D^MR", "E^WAITING"]
    assert [e.priority for e in entries] == ["high", "high", "routine", "routine", "routine"]
    assert [e.status for e in entries] == ["done", "done", "done", "not_eligible", "receiving"]
    assert entries[0].probabilities["any"] == 0.95 and entries[0].calls["subdural"] is True
    assert entries[0].model_version == "abc123" and entries[0].seconds_to_result == 3.2
    assert entries[3].reason == "modality MR is not CT"
    # a newer result for the same series is the one shown
    _result(engine, negative, 0.99, True)
    assert worklist(engine)[0].patient_name == "A^NEG"


def test_a_negative_on_an_incomplete_volume_is_not_routine(engine: Engine,
                                                           tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path))
    routine = _study(store, 1, "A^WHOLE")
    gap = _study(store, 2, "B^GAP")
    bleed = _study(store, 3, "C^BLEED")
    _result(engine, routine, 0.01, False)
    _result(engine, gap, 0.01, False, complete=False,
            notes="gap of 37.2 mm above slice 15 (about 5 slice(s) missing)")
    _result(engine, bleed, 0.9, True)
    entries = worklist(engine)
    assert [(e.patient_name, e.priority, e.complete) for e in entries] == [
        ("C^BLEED", "high", True), ("B^GAP", "incomplete", False), ("A^WHOLE", "routine", True)]
    assert entries[1].reason == "gap of 37.2 mm above slice 15 (about 5 slice(s) missing)"
    assert entries[2].reason == ""


def test_a_report_in_the_study_is_neither_its_last_slice_nor_its_status(
        engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path))
    series = _study(store, 8, "R^REPORTED")
    _result(engine, series, 0.2, False)
    (before,) = worklist(engine)
    store.store(InstanceMeta(sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34", sop_uid="1.2.8.9.1",
                             study_uid="1.2.8", series_uid="1.2.8.9",
                             transfer_syntax_uid="1.2.840.10008.1.2.1", patient_name="R^REPORTED",
                             patient_id="P8", modality="SR"), [b"x"])
    (after,) = worklist(engine)
    assert after.status == before.status == "done"  # the SR series is still 'receiving'
    assert after.last_slice_at == before.last_slice_at != ""


def test_a_study_shows_its_most_severe_series_and_lists_every_call(
        engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path))
    thick = _study(store, 9, "S^TWO_SERIES")
    store.store(InstanceMeta(sop_class_uid=CT, sop_uid="1.2.9.2.1", study_uid="1.2.9",
                             series_uid="1.2.9.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                             patient_name="S^TWO_SERIES", patient_id="P9", modality="CT",
                             series_number=3), [b"x"])
    with engine.connect() as conn:
        thin = int(conn.execute(select(Series.id).where(Series.series_uid == "1.2.9.2"))
                   .scalar_one())
    _result(engine, thick, 0.05, False)
    _result(engine, thin, 0.85, True)
    (entry,) = worklist(engine)
    assert entry.priority == "high" and entry.shown_series_uid == "1.2.9.2"
    assert [(x["series_uid"], x["positive"]) for x in entry.series] == [
        ("1.2.9.1", False), ("1.2.9.2", True)]
    assert "series disagree: shown is series 3, the most severe of 2" in entry.reason


def test_cli_prints_table_and_json(tmp_path: Path) -> None:
    from storage.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    engine = make_engine(url)
    _result(engine, _study(InstanceStore(engine, FileStore(tmp_path)), 7, "Z^BLEED"), 0.9, True)
    engine.dispose()
    out = subprocess.run([sys.executable, "-m", "node", "worklist", "--db-url", url, "--json"],
                         capture_output=True, text=True, check=True).stdout
    (study,) = json.loads(out)
    assert study["StudyInstanceUID"] == "1.2.7" and study["priority"] == "high"
    assert study["PatientName"] == "Z^BLEED" and study["rank"] == 1
    assert study["probabilities"]["any"] == 0.9 and study["calls"]["any"] is True
    table = subprocess.run([sys.executable, "-m", "node", "worklist", "--db-url", url],
                           capture_output=True, text=True, check=True).stdout
    assert "Z^BLEED" in table and "SDH 0.90" in table and "high" in table
    # `ichtriage worklist --json | head -c 1`: the reader leaves; no traceback, status 0
    with subprocess.Popen([sys.executable, "-m", "node", "worklist", "--db-url", url,
                           "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as piped:
        assert piped.stdout is not None and piped.stderr is not None
        piped.stdout.close()
        assert piped.wait(timeout=60) == 0
        assert piped.stderr.read() == b""
    bad = subprocess.run([sys.executable, "-m", "node", "worklist", "--db-url", url,
                          "--limit", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--limit: '0' is not a whole number >= 1" in bad.stderr


def test_the_table_shows_a_12_character_accession_whole_and_marks_a_cut() -> None:
    from node.cli.worklist import _cell

    assert _cell("PH0000012345", 16) == "PH0000012345    "
    assert _cell("A" * 30, 22) == "A" * 21 + "~"
