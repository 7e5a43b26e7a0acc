"""`ichtriage admin tokens ...` and `ichtriage admin feedback export`, run as commands."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

from ml.labels import LABELS
from ml.rsna import index_images, read_labels
from storage.db import make_engine, upgrade
from storage.feedback import FeedbackStore
from storage.files import FileStore
from storage.tokens import TokenStore
from tests.webdata import add_study


def ichtriage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True,
                          timeout=120)


def test_tokens_are_made_listed_and_revoked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    made = ichtriage("admin", "tokens", "create", "--role", "admin", "--name", "ops",
                     "--db-url", url)
    assert made.returncode == 0, made.stderr
    token = re.search(r"^(icht_1_\S{43})$", made.stdout, re.M)
    assert token is not None
    engine = make_engine(url)
    try:
        info = TokenStore(engine).verify(token.group(1))
        assert info is not None and info.name == "ops" and info.role == "admin"
        listed = ichtriage("admin", "tokens", "list", "--db-url", url)
        assert re.search(r"^\s+1\s+admin\s+active\s+.*ops$", listed.stdout, re.M)
        assert token.group(1).split("_")[2] not in listed.stdout
        assert ichtriage("admin", "tokens", "revoke", "1", "--db-url", url).returncode == 0
        assert TokenStore(engine).verify(token.group(1)) is None
        again = ichtriage("admin", "tokens", "revoke", "1", "--db-url", url)
        assert again.returncode == 1 and "no active token 1" in again.stderr
        bad = ichtriage("admin", "tokens", "create", "--role", "root", "--name", "x",
                        "--db-url", url)
        assert bad.returncode == 2
        assert len(TokenStore(engine).list()) == 1
    finally:
        engine.dispose()


def test_feedback_export_writes_rsna_labels_the_trainer_reads(tmp_path: Path) -> None:
    data = tmp_path / "var"
    url = f"sqlite:///{data / 'ichtriage.db'}"
    upgrade(url)
    engine = make_engine(url)
    files = FileStore(data / "data")  # where Settings.files_dir puts them
    negative = add_study(engine, files, 1, p_any=0.6, findings=("subdural",), slices=3)
    positive = add_study(engine, files, 2, p_any=0.9, findings=("subdural",), slices=3)
    store = FeedbackStore(engine)
    store.add(negative.study_uid, dict.fromkeys(LABELS, False), author="r", token_pk=None,
              result_pk=negative.result_pk)
    store.add(positive.study_uid, {"any": True, "subdural": True}, author="r", token_pk=None,
              result_pk=positive.result_pk)
    engine.dispose()
    out = tmp_path / "export"
    done = ichtriage("admin", "feedback", "export", "--out", str(out), "--with-files",
                     "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert "2 studies with feedback: 3 slices" in done.stdout
    labels = read_labels(out / "labels.csv")
    assert len(labels) == 3 and all(v.sum() == 0 for v in labels.values())
    records = index_images(out / "dicom", labels)
    assert {r.study_uid for r in records} == {negative.study_uid} and len(records) == 3
    with (out / "study_labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_study = {r["StudyInstanceUID"]: r for r in rows}
    assert by_study[positive.study_uid]["subdural"] == "1"
    assert by_study[positive.study_uid]["epidural"] == ""  # not read
    assert by_study[negative.study_uid]["any"] == "0"
