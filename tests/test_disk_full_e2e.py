"""Failure drill: the disk of the node's data folder fills while a series arrives.

The data folder (SQLite database and file store together, as on a one-machine install) is a
small tmpfs, nearly filled by another file. The instances that do not fit are answered
0xA700 (out of resources: the sender retries), nothing half-written stays, nothing of a
refused instance is indexed; once the space is back the same instances are sent again and
the series is stored whole and queued for triage.

Mounting needs CAP_SYS_ADMIN (root on a machine, or a container run with --privileged or
--cap-add SYS_ADMIN). Where the process has that capability, a mount that fails is a
failure; without it the drill cannot be made honestly (a lower RLIMIT_FSIZE gives EFBIG, not
ENOSPC; the free-space reserve is already tested in test_node_e2e) and is skipped, saying so.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import factories, peers
from tests.benchmarks.bench_flood import NO_ANSWER, SUCCESS, storescu_answers
from tests.nodeproc import NodeProcess, running_node, wait_for

pytestmark = [pytest.mark.slow, peers.needs(peers.have_dcmtk(), "DCMTK")]

CAP_SYS_ADMIN = 21  # linux/capability.h


def may_mount() -> bool:
    """Whether this process holds CAP_SYS_ADMIN (what mount(2) asks of a tmpfs mount)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


@contextmanager
def small_filesystem(folder: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB mounted on `folder` (made), unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs",
                        str(folder)], check=True, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        if may_mount():
            pytest.fail(f"mounting a tmpfs on {folder} failed with CAP_SYS_ADMIN held: {detail}")
        pytest.skip("mounting a small filesystem needs CAP_SYS_ADMIN (root, or a container "
                    f"run with --cap-add SYS_ADMIN): {detail.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False, capture_output=True,
                       timeout=30)


def fill(folder: Path, leave: int) -> Path:
    """A file taking all but `leave` bytes of `folder`'s filesystem."""
    ballast = folder / "ballast"
    size = shutil.disk_usage(folder).free - leave
    with open(ballast, "wb") as fh:
        block = b"\0" * (1 << 20)
        while size > 0:
            size -= fh.write(block[:min(len(block), size)])
    return ballast


def send(port: int, files: list[Path]) -> list[str]:
    """C-STORE each file with DCMTK storescu over one association, going on after a refusal;
    storescu's word for each answer, in order ('Success', 'Refused: OutOfResources'...)."""
    done = peers.run_storescu(files, port, aet="CT1", called_aet="ICHTRIAGE",
                              extra_args=["-v", "--no-halt"])
    answers = storescu_answers(done.stdout + done.stderr)
    return [answers.get(str(path), NO_ANSWER) for path in files]


def store_contents(node: NodeProcess) -> tuple[set[str], list[Path]]:
    """SOP Instance UIDs on disk under their final names, and every other file in the store
    (temporaries, anything else) apart from the quarantine."""
    root = node.data_dir / "data"
    finals, others = set(), []
    for path in root.rglob("*"):
        if path.is_dir() or path.relative_to(root).parts[0].startswith(".orphans"):
            continue
        if path.suffix == ".dcm" and not path.name.startswith("."):
            finals.add(path.stem)
        else:
            others.append(path)
    return finals, others


def send_all(port: int, batches: list[list[Path]]) -> list[list[str]]:
    """Each batch over its own association, all at once; the answers by batch."""
    with ThreadPoolExecutor(len(batches)) as pool:
        return list(pool.map(lambda batch: send(port, batch), batches))


def test_a_full_disk_refuses_what_does_not_fit_and_recovers_when_space_returns(
        tmp_path: Path) -> None:
    # Four scanners at once, eight slices of about 131 KB each; room for a few of them. The
    # database shares the disk: whichever write meets the full disk first (the free-space
    # check, a file, SQLite's log) refuses the instance.
    series = [factories.ct_series(8, size=256) for _ in range(4)]
    batches = [factories.write_series(tmp_path / f"in{i}", s) for i, s in enumerate(series)]
    uids = [[str(ds.SOPInstanceUID) for ds in s] for s in series]
    refused = "Refused: OutOfResources"  # DCMTK's words for 0xA700
    with small_filesystem(tmp_path / "var", size_mb=24) as data_dir:
        with running_node(tmp_path, settle=0.5) as node:
            ballast = fill(data_dir, leave=1_200_000)
            answered = send_all(node.port, batches)
            answers = {uid: a for batch, got in zip(uids, answered, strict=True)
                       for uid, a in zip(batch, got, strict=True)}
            stored = {uid for uid, answer in answers.items() if answer == SUCCESS}
            assert set(answers.values()) == {SUCCESS, refused}, answered  # some fitted
            finals, others = store_contents(node)
            assert finals == stored  # every acknowledged instance has its file, no other
            assert others == []  # no temporary or partial file left
            indexed = {str(r[0]) for r in node.query("select sop_uid from instance")}
            assert indexed == stored  # nothing of a refused instance in the index
            assert "(0xA700 out of resources)" in node.log_text()
            ballast.unlink()
            # The scanners send their series again: all of it is kept now.
            assert send_all(node.port, batches) == [[SUCCESS] * 8] * 4
            finals, others = store_contents(node)
            assert finals == {uid for batch in uids for uid in batch} and others == []
            assert node.query("select instance_count from series") == [(8,)] * 4
            wait_for(lambda: node.query("select status, count(*) from job group by status")
                     == [("queued", 4)], timeout=30, what="the four series queued for triage")
        assert "Traceback" not in node.log_text()
