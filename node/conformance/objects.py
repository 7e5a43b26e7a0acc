"""The conformance statement's configuration, character set, security and annex sections
(PS3.2 A.4.4, A.6, A.7, A.8), as Markdown lines."""

from __future__ import annotations

from dataclasses import fields
from itertools import groupby

from pydicom import charset
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID

from node.config import Settings
from node.conformance.sr_tree import TreeItem, content_tree
from node.dicom.eligibility import EligibilityRules
from node.triage import codes

# The settings an administrator of the remote AEs needs to know, and what each means here.
DICOM_SETTINGS = {
    "ae_title": "the node's AE title, called and calling",
    "bind": "address the DICOM port listens on",
    "port": "the DICOM port",
    "allow_ae": "calling AE titles allowed, `AE` or `AE@HOST`; empty: any",
    "destinations": "where triage results are sent, `AE@HOST:PORT`",
    "delivery_retry_seconds": "wait after a failed delivery, doubled after each further one",
    "delivery_retry_max_seconds": "longest wait between tries of one delivery",
    "allow_store_ae": "calling AE titles allowed to store (among `allow_ae`); empty: all",
    "allow_query_ae": "calling AE titles allowed to query and retrieve; empty: all",
    "move_destination": "C-MOVE destinations, `AE@HOST:PORT`; others are refused (0xA801)",
    "max_pdu": "largest P-DATA-TF accepted, bytes; 0: unlimited",
    "max_message_mb": "largest data set of one message held in memory",
    "max_associations": "open associations, node-wide",
    "max_associations_per_host": "open associations from one calling host",
    "association_request_timeout": "seconds from connection to a complete A-ASSOCIATE-RQ",
    "network_timeout": "seconds an association may sit idle, or a PDU take to arrive",
    "settle_seconds": "quiet time after which a series is complete",
    "aborted_wait_seconds": "wait for a resend of a series whose transfer was aborted",
    "min_free_mb": "free disk below which instances are refused with 0xA700",
    "min_slices": "fewest usable slices of a series that is triaged",
    "eligible_body_parts": "Body Part Examined values of a triaged series",
    "default_character_set": "Specific Character Set assumed where a data set has none",
    "tls_cert": "PEM certificate: the DICOM port speaks TLS",
    "tls_key": "PEM private key of `tls_cert`",
    "tls_ca": "PEM CA: callers must present a certificate it signed",
}


def configuration(settings: Settings) -> list[str]:
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(DICOM_SETTINGS) - known)
    if unknown:
        raise ValueError(f"DICOM_SETTINGS names settings Settings lacks: {unknown}")
    rows = [
        "### Configuration", "",
        "Every setting comes from its default, the TOML file (`--config`), an environment "
        "variable `ICHTRIAGE_<NAME>` or the command line, in increasing precedence; "
        "`deploy/ichtriage.toml` explains all of them. Those that concern remote AEs, with "
        "the values this statement was generated with:", "",
        "| Setting | Value | Meaning |", "| --- | --- | --- |",
    ]
    for name, meaning in DICOM_SETTINGS.items():
        rows.append(f"| `{name}` | {_value(getattr(settings, name))} | {meaning} |")
    return [*rows, "", "Remote AEs are not configured by AE title alone: the node accepts "
            "any calling host unless `allow_ae` binds a title to one.", ""]


def character_sets(settings: Settings) -> list[str]:
    terms = [t for t in charset.python_encoding if t]
    default = (f"`{settings.default_character_set}`" if settings.default_character_set
               else "the default repertoire, ISO-IR 6,")
    return [
        "## Support of Character Sets", "",
        "Instances are stored with whatever Specific Character Set (0008,0005) they declare; "
        "the stored file keeps the bytes as sent. For the index and the worklist, text is "
        "decoded with pydicom, which knows these defined terms (PS3.3 C.12.1.1.2), including "
        "code extensions (ISO 2022) of them:", "",
        ", ".join(f"`{t}`" for t in terms), "",
        f"A data set declaring none is read as {default} (setting `default_character_set`). "
        "The triage SR keeps its source series' Specific Character Set, so patient and study "
        "attributes are written as the source wrote them; a term pydicom recognises in a "
        "misspelt form is written as the standard term, and an unknown one as `ISO_IR 192` "
        "(UTF-8). The node's own text in the SR is ASCII.", "",
    ]


def security(settings: Settings) -> list[str]:
    tls = "on" if settings.tls_cert else "off"
    return [
        "## Security", "",
        "| Measure | How | Default here |", "| --- | --- | --- |",
        f"| TLS on the DICOM port (PS3.15 B.1, TLS 1.2 or newer) | `tls_cert`, `tls_key` | "
        f"{tls} |",
        "| Client certificates required | `tls_ca`: the CA that signs callers' certificates | "
        f"{'on' if settings.tls_ca else 'off'} |",
        "| Calling AE allow-list, optionally bound to the caller's host | `allow_ae` | "
        f"{', '.join(map(str, settings.allow_ae)) or 'off (any caller)'} |",
        "| Called AE title must be the node's | always | on |",
        "| Listening address | `bind` | "
        f"`{settings.bind}` |", "",
        "Results are sent to the destinations without TLS. Every association is recorded in "
        "the database (`association` table: calling and called AE title, host, times, "
        "counts); logs carry UIDs and counts, never patient names or IDs. The node does not "
        "de-identify, sign or encrypt stored instances: keep the data directory on a "
        "protected volume.", "",
    ]


def sr_annex(complete: Dataset, partial: Dataset) -> list[str]:
    rows = [
        "### Created SOP Instance: the Triage Report", "",
        f"SOP Class: {UID(complete.SOPClassUID).name} (`{complete.SOPClassUID}`), template "
        "TID 1500 Measurement Report (IHE AI Results), one per triaged series, in a new "
        f"series of the source's study: Modality `{complete.Modality}`, Series Description "
        f"\"{complete.SeriesDescription}\". Verification Flag `{complete.VerificationFlag}`; "
        f"Completion Flag `{complete.CompletionFlag}` for a result on the whole volume, "
        f"`{partial.CompletionFlag}` with a Completion Flag Description (\"provisional: ...\")"
        " when the volume had a gap, too little coverage or unread slices. A newer report on "
        "the same series names the earlier ones in the Predecessor Documents Sequence and "
        "keeps the same Tracking UID. Patient and study attributes are copied from the "
        "source; the Current Requested Procedure Evidence Sequence lists every analysed "
        "image.", "",
        "Content tree (a finding called present cites its key slice; `1-n`: repeated):", "",
        "| Depth | Relationship | Value Type | Concept Name | Value |",
        "| --- | --- | --- | --- | --- |",
    ]
    return [*rows, *_tree_rows(content_tree(complete)), ""]


def _tree_rows(items: list[TreeItem]) -> list[str]:
    rows = []
    for item, run in groupby(items):
        repeat = " (1-n)" if len(list(run)) > 1 else ""
        rows.append(f"| {'>' * item.depth or 'root'} | {item.relationship} | "
                    f"{item.value_type} | {item.concept}{repeat} | {item.value} |")
    return rows


def codes_annex() -> list[str]:
    rows = ["### Coded Terminology", "",
            "| Label | Finding (CODE, valued Present or Absent) | Probability (NUM) |",
            "| --- | --- | --- |"]
    for label, concepts in codes.LABEL_CONCEPTS.items():
        rows.append(f"| {label} | {_code(concepts.finding)} | {_code(concepts.probability)} |")
    rows += ["", "| Role | Code |", "| --- | --- |",
             f"| Present | {_code(codes.PRESENT)} |", f"| Absent | {_code(codes.ABSENT)} |",
             f"| Probability unit | {_code(codes.PROBABILITY_UNIT)} |",
             f"| Procedure reported | {_code(codes.PROCEDURE_REPORTED)} |",
             f"| Document title | {_code(codes.REPORT_TITLE)} |",
             f"| Observer type | {_code(codes.DEVICE_OBSERVER)} |",
             f"| Comment | {_code(codes.COMMENT)} |", "",
             f"`{codes.PRIVATE_SCHEME}` is a private coding scheme (\"{codes.PRIVATE_SCHEME_NAME}"
             f"\", {codes.PRIVATE_SCHEME_ORGANIZATION}), declared in each report's Coding "
             "Scheme Identification Sequence: no standard code exists for the five subtypes "
             "or for the probability of a finding. Every other code is taken from pydicom's "
             "PS3.16 dictionary (`node/triage/codes.py`).", ""]
    return rows


def eligibility_annex(settings: Settings) -> list[str]:
    rules = EligibilityRules.create(min_slices=settings.min_slices,
                                    body_parts=settings.eligible_body_parts)
    classes = ", ".join(f"{UID(u).name} (`{u}`)" for u in sorted(rules.sop_classes))
    parts = ", ".join(f"`{p}`" if p else "empty" for p in sorted(rules.body_parts))
    return ["### Series That Are Triaged", "",
            f"Modality {', '.join(sorted(rules.modalities))}; SOP Class {classes}; Body Part "
            f"Examined {parts}; some images ORIGINAL axial; at least {rules.min_slices} usable "
            "slices. Other instances are stored and indexed but get no report; the worklist "
            "says why.", ""]


def _code(code: Code) -> str:
    return f"({code.value}, {code.scheme_designator}, \"{code.meaning}\")"


def _value(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" if v else "(empty)" for v in value) or "(none)"
    if value is None or value == "":
        return "(none)"
    return f"`{value}`"
