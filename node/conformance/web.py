"""The conformance statement's web services: QIDO-RS (PS3.18 10.6.1), from node/http/dicomweb.py."""

from __future__ import annotations

import dataclasses
import typing

from pydicom.datadict import dictionary_keyword

from node.config import Settings


def web_services(settings: Settings) -> list[str]:
    """PS3.2 "Web Services" lines: the DICOMweb resources the HTTP server answers."""
    lines = ["## Web Services", ""]
    if not settings.http_port:
        return [*lines, "None: the HTTP server is off (`http_port = 0`).", ""]
    from node.http.dicomweb import ALIASES, to_dicom_json
    from storage.study_search import StudyMatch

    base = f"http://{settings.http_bind}:{settings.http_port}/dicom-web"
    keys = ", ".join(f"{keyword} ({tag[:4]},{tag[4:]})" for tag, keyword in sorted(ALIASES.items()))
    returned = sorted(to_dicom_json(_placeholder(StudyMatch)), key=lambda tag: int(tag, 16))
    names = ", ".join(f"{dictionary_keyword(int(tag, 16))} ({tag[:4]},{tag[4:]})"
                      for tag in returned)  # fmt: skip
    return [
        *lines,
        f"Base URL `{base}` (HTTP without TLS, on `http_bind`; beyond the host, serve it behind "
        "a TLS-terminating proxy). Every request needs a token of role `reader` or above "
        "(`Authorization: Bearer`, or the web page's session); docs/http.md describes the "
        "node's own HTTP API and page, which are not DICOM services.", "",
        "| Service | Resource | Supported |",
        "| --- | --- | --- |",
        f"| QIDO-RS Search for Studies (PS3.18 10.6.1) | `GET {base}/studies` | Yes |",
        "| QIDO-RS Search for Series / Instances | `.../series`, `.../instances` | No |",
        "| WADO-RS, WADO-URI, STOW-RS, UPS-RS | | No |", "",
        f"- Matching keys (by keyword or tag): {keys}. StudyInstanceUID takes a comma-separated "
        "list; StudyDate a date or a range (`YYYYMMDD-YYYYMMDD`, either end open); "
        "AccessionNumber single-value matching with `*` and `?`. Any other key, and any patient "
        "attribute, is answered 400.",
        "- `limit` (1-1000, default 100) and `offset`; `includefield` is accepted, and every "
        "attribute below is returned anyway; `fuzzymatching=true` is answered 400.",
        f"- Returned attributes: {names}. No patient attribute is returned.",
        "- Media type: `application/dicom+json` (PS3.18 F.2) only; no match is 204.", "",
    ]


def _placeholder(cls: type) -> typing.Any:
    """An instance of the dataclass `cls` with an empty value of each field's type."""
    hints = typing.get_type_hints(cls)
    empty = {str: "", int: 0}
    return cls(**{f.name: empty.get(hints[f.name], ()) for f in dataclasses.fields(cls)})

