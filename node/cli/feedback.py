"""`ichtriage admin feedback export`: radiologists' feedback as training labels.

The RSNA 2019 label format is per image (`ID_<image>_<label>,0|1`). Feedback is given per
study, which fixes every slice's labels only when the reader says all six are absent: those
studies' slices go to labels.csv (all zeros). A study read as positive says which finding is
there, not on which slices, so it is written to study_labels.csv only (series-level labels,
for multiple-instance training) and counted as left out of labels.csv. With --with-files the
slices of labels.csv are copied to dicom/<StudyInstanceUID>/ID_<SOPInstanceUID>.dcm, so
`ichtriage admin evaluate|train --dicom-dir OUT/dicom --labels OUT/labels.csv` reads them.

Exit codes: 0 written; 1 no database, or --out cannot be written (a file of that name, a
folder without permission). Each export is audited (node.cli.audit).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from ml.labels import LABELS
from node.cli import audit
from node.config import Settings
from storage.db import open_existing
from storage.errors import DatabaseMissingError
from storage.feedback import FeedbackStore
from storage.files import FileStore


def add_feedback_parser(commands: Any,
                        setting_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    feedback = commands.add_parser("feedback", help="radiologists' feedback")
    sub = feedback.add_subparsers(dest="feedback_command", required=True)
    export = sub.add_parser("export", help="write labels.csv (RSNA format) and "
                            "study_labels.csv from the newest feedback")
    export.add_argument("--out", type=Path, required=True, help="folder to write into")
    export.add_argument("--with-files", action="store_true",
                        help="copy the labelled slices as dicom/<study>/ID_<SOPInstanceUID>.dcm")
    setting_flags(export)


@dataclass(frozen=True)
class Exported:
    """What an export wrote: labels.csv's slices come from the studies read as negative."""

    folder: Path
    studies: int
    slices: int
    left_out: int  # studies read with a finding, or with a label unread: study_labels.csv only

    @property
    def labels_csv(self) -> Path:
        return self.folder / "labels.csv"

    @property
    def dicom_dir(self) -> Path:
        return self.folder / "dicom"


def export_feedback(engine: Engine, files: FileStore, out: Path, *, with_files: bool,
                    why: str = "") -> Exported:
    """Write labels.csv and study_labels.csv (and, with_files, the slices) into `out` from the
    newest feedback; the export is audited (actor `cli:<OS user>`, `why` in its detail).
    Raises OSError when `out` cannot be written."""
    studies = FeedbackStore(engine).for_export()
    out.mkdir(parents=True, exist_ok=True)
    slices = left_out = 0
    with (out / "labels.csv").open("w", newline="") as f_slices, \
            (out / "study_labels.csv").open("w", newline="") as f_studies:
        rows, study_rows = csv.writer(f_slices), csv.writer(f_studies)
        rows.writerow(["ID", "Label"])
        study_rows.writerow(["StudyInstanceUID", "SeriesInstanceUID", *LABELS])
        for study in studies:
            study_rows.writerow([study.study_uid, study.series_uid, *(
                "" if label not in study.labels else int(study.labels[label])
                for label in LABELS)])
            negative = all(study.labels.get(label) is False for label in LABELS)
            if not negative:
                left_out += 1
                continue
            for sop, path in study.instances:
                rows.writerows([f"ID_{sop}_{label}", 0] for label in LABELS)
                slices += 1
                if with_files:
                    target = out / "dicom" / study.study_uid / f"ID_{sop}.dcm"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(files.path_of(path), target)
    audit.record(engine, "feedback_export",
                 detail=f"{len(studies)} studies, {slices} slices{why}")
    return Exported(out, len(studies), slices, left_out)


def run_feedback(args: argparse.Namespace, settings: Settings) -> int:
    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        print(f"ichtriage admin feedback: {exc}", file=sys.stderr)
        return 1
    try:
        done = export_feedback(engine, FileStore(settings.files_dir), args.out,
                               with_files=args.with_files)
    except OSError as exc:  # --out is a file, or a folder this user may not write
        where = "" if exc.filename in (None, str(args.out)) else f" ({exc.filename})"
        print(f"ichtriage admin feedback export: --out {args.out}: cannot write there"
              f"{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"{done.studies} studies with feedback: {done.slices} slices of studies read as "
          f"negative in {done.labels_csv}; {done.left_out} studies with a finding or a label "
          f"unread only in {done.folder / 'study_labels.csv'} (which slices show it is not "
          f"known)")
    return 0
