"""The DICOM Conformance Statement is written from the code and cannot drift from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pydicom.uid import UID
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)

from node.config import Settings
from node.conformance import GENERATED_BY, render
from node.conformance.facts import (
    Service,
    SopClass,
    accepted_services,
    initiator,
    retrieves,
    service_name,
    storage_scu_scope,
)
from node.conformance.sr_tree import content_tree, sample_report
from node.dicom.ae import build_ae
from node.dicom.status import DESCRIPTIONS
from node.triage.codes import LABEL_CONCEPTS

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "conformance.md"


def test_committed_statement_is_what_the_code_writes() -> None:
    expected = render(Settings())
    assert COMMITTED.read_text() == expected, (
        f"docs/conformance.md is out of date: regenerate it with `{GENERATED_BY}`")


def test_command_prints_the_statement() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHTRIAGE_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "node", "admin", "conformance", "--defaults"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
                         check=True).stdout
    assert out == COMMITTED.read_text()
    sample = ROOT / "deploy" / "ichtriage.toml"
    site = subprocess.run([sys.executable, "-m", "node", "admin", "conformance", "--config",
                           str(sample)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120, check=True).stdout
    assert "| `allow_ae` | `CT_ER1@10.0.0.21`, `CT_ER2@10.0.0.22` |" in site
    assert "| Listening address | `bind` | `0.0.0.0` |" in site


def test_every_accepted_context_is_listed() -> None:
    text = COMMITTED.read_text()
    contexts = build_ae(Settings()).supported_contexts
    assert len(contexts) > 100
    for cx in contexts:
        assert f"`{cx.abstract_syntax}`" in text, UID(cx.abstract_syntax).name
        for ts in cx.transfer_syntax:
            assert f"`{ts}`" in text, UID(ts).name
    listed = sum(len(s.sop_classes) for s in accepted_services(Settings()))
    assert listed == len(contexts)


def test_codes_statuses_and_limits_are_the_codes() -> None:
    text = COMMITTED.read_text()
    for concepts in LABEL_CONCEPTS.values():
        for code in (concepts.finding, concepts.probability):
            assert f"({code.value}, {code.scheme_designator}, \"{code.meaning}\")" in text
    for code in DESCRIPTIONS:
        assert f"`0x{code:04X}`" in text
    defaults = Settings()
    assert f"Maximum PDU size received: {defaults.max_pdu} bytes" in text
    assert f"| associations accepted at once, node-wide | {defaults.max_associations} |" in text


def test_settings_change_the_statement(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    settings = Settings(ae_title="ERNODE", max_pdu=65536, max_associations=5,
                        default_character_set="ISO_IR 100", tls_cert=pem, tls_key=pem)
    text = render(settings)
    assert "Maximum PDU size received: 65536 bytes" in text
    assert "| associations accepted at once, node-wide | 5 |" in text
    assert "the called AE title is not `ERNODE`" in text
    assert "A data set declaring none is read as `ISO_IR 100`" in text
    assert "| TLS on the DICOM port (PS3.15 B.1, TLS 1.2 or newer) | `tls_cert`, `tls_key` | on |" in text
    assert "unlimited" in render(Settings(max_pdu=0))


def test_sr_tree_is_read_from_a_built_report() -> None:
    partial = sample_report(present=("any", "subdural"), complete=False)
    assert partial.CompletionFlag == "PARTIAL"
    tree = content_tree(partial)
    assert tree[0].concept == '(126000, DCM, "Imaging Measurement Report")'
    key_slices = [t for t in tree if t.relationship == "INFERRED FROM"]
    assert len(key_slices) == 2  # one per finding called present
    findings = {t.concept: t.value for t in tree if t.value_type == "CODE" and t.depth == 3}
    assert findings['(ICHT005, 99ICHT, "Subdural hemorrhage")'] == '(52101004, SCT, "Present")'
    assert findings['(ICHT001, 99ICHT, "Epidural hemorrhage")'] == '(272519000, SCT, "Absent")'


def test_query_retrieve_services_would_be_grouped_and_described() -> None:
    """When the AE accepts Q/R SOP classes, they form their own service, and MOVE and GET
    are named as retrieves after which the node sends instances itself."""
    assert service_name(PatientRootQueryRetrieveInformationModelFind) == "Query Retrieve"
    qr = Service("Query Retrieve", tuple(
        SopClass(str(uid), UID(uid).name, ("1.2.840.10008.1.2.1",), None, None)
        for uid in (PatientRootQueryRetrieveInformationModelFind,
                    PatientRootQueryRetrieveInformationModelMove,
                    StudyRootQueryRetrieveInformationModelGet)))
    assert [s.uid for s in retrieves([qr])] == [PatientRootQueryRetrieveInformationModelMove,
                                                StudyRootQueryRetrieveInformationModelGet]
    # the node's own AE: Patient and Study Root, each with MOVE and GET
    assert len(retrieves(accepted_services(Settings()))) == 4
    report = sample_report()
    initiator_ = initiator(str(report.SOPClassUID), str(report.file_meta.TransferSyntaxUID))
    assert "any stored SOP class" in storage_scu_scope([qr], initiator_)
    assert "any stored SOP class" in storage_scu_scope(accepted_services(Settings()), initiator_)
    assert storage_scu_scope([], initiator_) == "Comprehensive 3D SR Storage only"


def test_web_services_are_the_qido_rs_the_http_server_answers() -> None:
    from node.http.dicomweb import ALIASES, KNOWN

    text = render(Settings(http_bind="10.1.2.3", http_port=8443))
    web = text[text.index("## Web Services"):text.index("## Media Interchange")]
    assert "`GET http://10.1.2.3:8443/dicom-web/studies` | Yes |" in web
    for keyword in ALIASES.values():  # every matching key the code accepts is listed
        assert f"{keyword} (" in web
    assert set(ALIASES.values()) | set(ALIASES) | {"limit", "offset", "includefield",
                                                    "fuzzymatching"} == KNOWN
    assert "NumberOfStudyRelatedInstances (0020,1208)" in web
    assert "PatientName" not in web and "PatientID" not in web
    off = render(Settings(http_port=0))
    assert "## Web Services\n\nNone: the HTTP server is off" in off
