"""The real peers the end-to-end tests rely on start, answer and clean up after themselves."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests.benchmarks.ctgen import write_ct_series
from tests.peers import (
    LOOPBACK,
    free_port,
    have_dcmtk,
    have_orthanc,
    have_postgres,
    needs,
    orthanc_server,
    postgres_server,
    run_echoscu,
    run_storescu,
    storescp_server,
    wait_for_port,
)

needs_dcmtk = needs(have_dcmtk(), "DCMTK")
needs_orthanc = needs(have_orthanc(), "Orthanc")
needs_postgres = needs(have_postgres(), "PostgreSQL")


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return write_ct_series(tmp_path / "ct", 1, size=64)[0]


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind((LOOPBACK, port))


def test_wait_for_port_times_out_when_nothing_listens() -> None:
    with pytest.raises(TimeoutError, match="nothing listens"):
        wait_for_port(LOOPBACK, free_port(), timeout=0.3)


def test_ctgen_writes_distinct_ct_slices_of_one_series(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, 3, size=32, seed=1)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert {ds.SOPClassUID for ds in datasets} == {CTImageStorage}
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert datasets[0].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert datasets[0].pixel_array.shape == (32, 32)
    assert datasets[0].pixel_array.dtype.itemsize == 2


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
def test_postgres_answers_select_1_and_is_removed_afterwards(tmp_path: Path) -> None:
    with postgres_server(tmp_path) as url:
        assert url.startswith(f"postgresql+psycopg://postgres@{LOOPBACK}:")
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select 1")).scalar_one() == 1
        finally:
            engine.dispose()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    assert (tmp_path / "postgres.log").exists()


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
def test_postgres_is_stopped_when_the_body_raises(tmp_path: Path) -> None:
    port = 0
    with pytest.raises(RuntimeError, match="boom"), postgres_server(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        raise RuntimeError("boom")
    assert port
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, port), timeout=1).close()


@pytest.mark.slow
@needs_dcmtk
def test_storescp_receives_a_file_on_loopback(tmp_path: Path, ct_file: Path) -> None:
    out = tmp_path / "received"
    with storescp_server(out, aet="TESTSCP") as (aet, port):
        echo = run_echoscu(port, aet="TESTSCU", called_aet=aet)
        assert echo.returncode == 0, echo.stderr
        sent = run_storescu(ct_file, port, aet="TESTSCU", called_aet=aet)
        assert sent.returncode == 0, sent.stderr
    received = list(out.iterdir())
    assert len(received) == 1
    sop_uid = pydicom.dcmread(ct_file).SOPInstanceUID
    assert pydicom.dcmread(received[0]).SOPInstanceUID == sop_uid


@pytest.mark.slow
@needs_dcmtk
@needs_orthanc
def test_orthanc_stores_a_ct_and_keeps_it_across_a_restart(tmp_path: Path, ct_file: Path) -> None:
    sop_uid = pydicom.dcmread(ct_file).SOPInstanceUID
    node = ("TESTNODE", LOOPBACK, free_port())
    with orthanc_server(tmp_path, aet="TESTPACS", known_modalities={"node": node}) as orthanc:
        assert orthanc.rest("/system")["DicomAet"] == "TESTPACS"
        assert orthanc.rest("/modalities") == ["node"]
        assert orthanc.instances() == []
        sent = run_storescu(ct_file, orthanc.dicom_port, aet="TESTSCU", called_aet=orthanc.aet)
        assert sent.returncode == 0, sent.stderr
        assert orthanc.sop_instance_uids() == {sop_uid}
        ports = (orthanc.dicom_port, orthanc.http_port)

        orthanc.stop()
        assert not orthanc.running
        refused = run_echoscu(orthanc.dicom_port, aet="TESTSCU", called_aet=orthanc.aet)
        assert refused.returncode != 0

        orthanc.start()
        assert (orthanc.dicom_port, orthanc.http_port) == ports
        assert orthanc.sop_instance_uids() == {sop_uid}
        assert len(orthanc.instances()) == 1
    assert not orthanc.running
