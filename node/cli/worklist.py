"""`ichtriage worklist`: the studies as a table, or one JSON array (the API's names)."""

from __future__ import annotations

import json
import sys

from node.config import Settings
from storage.db import open_existing
from storage.worklist import WorklistEntry, worklist

SHORT = {"any": "any", "epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
         "subarachnoid": "SAH", "subdural": "SDH"}


def print_worklist(settings: Settings, *, as_json: bool, limit: int) -> int:
    engine = open_existing(settings.database_url)  # a read: a typo creates nothing
    try:
        entries = worklist(engine, limit=limit)
    finally:
        engine.dispose()
    if as_json:
        json.dump([as_item(e) for e in entries], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    header = (f"{'#':>3}  {'priority':10}  {'status':12}  {'patient':22}  {'accession':16}  "
              f"findings")
    print(header)
    print("-" * len(header))
    for e in entries:
        found = [f"{SHORT[k]} {e.probabilities[k]:.2f}" for k, v in e.calls.items()
                 if v and k in SHORT]
        findings = ", ".join(found) or (
            f"none (any {e.probabilities['any']:.2f})" if "any" in e.probabilities else "")
        if e.reason:
            findings = f"{findings}; {e.reason}" if findings else e.reason
        print(f"{e.rank:>3}  {e.priority:10}  {e.status:12}  {_cell(e.patient_name, 22)}  "
              f"{_cell(e.accession_number, 16)}  {findings}")
    if not entries:
        print("(no studies)")
    return 0


def as_item(e: WorklistEntry) -> dict[str, object]:
    """The API's worklist item (node.http.schemas: DICOM keywords for DICOM attributes,
    snake_case for the node's own fields), with the rank and, for the operator at the node,
    PatientName and PatientID, which the API leaves out."""
    from node.http.schemas import WorklistItem

    return {"rank": e.rank, "PatientName": e.patient_name, "PatientID": e.patient_id,
            **WorklistItem.of(e).model_dump(mode="json")}


def _cell(text: str, width: int) -> str:
    """`text` in `width` columns; a value cut to fit ends in "~" so the cut shows."""
    return f"{text:{width}}" if len(text) <= width else text[:width - 1] + "~"
