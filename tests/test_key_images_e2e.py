"""--key-images: with the SR of a bleed, the node sends each finding's key slice with its
heat map burnt in as a Secondary Capture; a normal study gets none. DCMTK's storescp is the
PACS."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from ml.phantom import write_series
from node.triage.registry import DEMO_NAME
from tests import peers
from tests.nodeproc import running_node, wait_for

pytestmark = [pytest.mark.slow, peers.needs(peers.have_dcmtk(), "DCMTK")]

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def received(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]


def all_written(folder: Path, count: int) -> bool:
    """`count` files at the PACS, each whole: storescp writes a file in place, so one can be
    seen before its last byte."""
    try:
        return len(received(folder)) == count
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError):
        return False


def test_a_bleed_gets_a_key_image_beside_its_sr(tmp_path: Path) -> None:
    bleed = write_series(tmp_path / "bleed", seed=901, slices=24, size=512,
                         subtypes=("subdural",))
    normal = write_series(tmp_path / "normal", seed=902, slices=24, size=512)
    with peers.storescp_server(tmp_path / "pacs", aet="PACS") as pacs, \
            running_node(tmp_path, "--destination", f"PACS@127.0.0.1:{pacs.port}",
                         "--key-images", workers=1) as node:
        for folder in ("normal", "bleed"):
            sent = peers.run_storescu(tmp_path / folder, node.port, aet="CT1",
                                      called_aet="ICHTRIAGE")
            assert sent.returncode == 0, sent.stderr
        wait_for(lambda: all_written(tmp_path / "pacs", 3), timeout=240,
                 what="two SRs and one key image at the PACS")
        statuses = node.query("select s.modality, s.status, s.status_reason from series s "
                              "where s.modality = 'OT'")
        assert statuses == [("OT", "not_eligible", "key image made by this node")]
    by_class: dict[str, list[pydicom.Dataset]] = {}
    for ds in received(tmp_path / "pacs"):
        by_class.setdefault(ds.SOPClassUID, []).append(ds)
    (sc,) = by_class[SC_STORAGE]
    assert sc.StudyInstanceUID == bleed.study_uid != normal.study_uid
    assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in sc.ImageComments
    assert "subdural" in sc.ImageComments
    assert f"model {DEMO_NAME} " in sc.ImageComments  # as the SR names it: registry name, version
    pixels = sc.pixel_array
    assert pixels.shape == (512, 512, 3)
    warm = (pixels[..., 0].astype(int) - pixels[..., 2]) > 60
    assert 0.01 < warm.mean() < 0.6  # the heat map covers part of the slice
    assert len(by_class["1.2.840.10008.5.1.4.1.1.88.34"]) == 2  # both SRs (Comprehensive 3D)
