"""The radiologist's page in a real browser: phantom studies sent to a running node with
--http-port, Debian's chromium driven by Playwright (no browser download), log-in with a
token made by the admin CLI, the rows and their order, a study, feedback that lands in SQL,
and screenshots kept in the test's folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ml.phantom import write_series
from tests import peers
from tests.nodeproc import NodeProcess, running_node, wait_for

pytestmark = [
    pytest.mark.slow,
    peers.needs(peers.have_dcmtk(), "DCMTK"),
    peers.needs(peers.have_chromium(), "chromium and Playwright"),
]


def make_token(node: NodeProcess, role: str, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "node", "admin", "tokens", "create", "--role",
                          role, "--name", name, "--db-url", node.db_url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"^(icht_\d+_\S+)$", out, re.M)
    assert match is not None, out
    return match.group(1)


def api(node: NodeProcess, path: str, token: str) -> object:
    request = urllib.request.Request(node.http_url + path,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_log_in_read_the_worklist_open_a_study_and_give_feedback(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    bleed = write_series(tmp_path / "bleed", seed=901, slices=24, size=512,
                         subtypes=("subdural",))
    normal = write_series(tmp_path / "normal", seed=902, slices=24, size=512)
    with running_node(tmp_path, workers=1, http=True) as node:
        assert f"HTTP on 127.0.0.1:{node.http_port}" in node.log_text()
        for folder in ("normal", "bleed"):
            sent = peers.run_storescu(tmp_path / folder, node.port, aet="CT1",
                                      called_aet="ICHTRIAGE")
            assert sent.returncode == 0, sent.stderr
        wait_for(lambda: node.query("select count(*) from triage_result") == [(2,)],
                 timeout=240, what="two results")
        token = make_token(node, "radiologist", "Dr E2E")
        with urllib.request.urlopen(node.http_url + "/healthz", timeout=30) as response:
            health = json.loads(response.read())
        assert health["worker_alive"] is True and health["queue_depth"] == 0, health
        expected = [i["StudyInstanceUID"] for i in api(node, "/api/worklist", token)["items"]]  # type: ignore[index]
        assert expected == [bleed.study_uid, normal.study_uid]
        blocked: list[str] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=peers.chromium_path(), headless=True,
                                         args=["--no-sandbox", "--disable-background-networking"])
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.on("console", lambda m: blocked.append(m.text)
                        if "Content Security Policy" in m.text else None)
                page.goto(node.http_url + "/")
                assert page.url.endswith("/login")
                page.fill("#token", token)
                page.click("#login")
                page.wait_for_selector("body[data-loaded=yes]", state="attached")
                rows = page.locator("#rows tr")
                assert [rows.nth(i).get_attribute("data-uid") for i in range(rows.count())
                        ] == expected
                assert rows.nth(0).get_attribute("class") == "priority-high"
                assert "SDH" in rows.nth(0).locator("td.findings").inner_text()
                assert "none" in rows.nth(1).locator("td.findings").inner_text()
                assert "SECRET" not in page.content()
                page.screenshot(path=str(tmp_path / "worklist.png"), full_page=True)
                page.select_option("select[name=finding]", "subdural")  # the page's filter
                wait_for(lambda: rows.count() == 1, timeout=10, what="the filtered rows")
                assert rows.nth(0).get_attribute("data-uid") == bleed.study_uid
                page.fill("input[name=study_date_from]", "2100-01-01")  # no study that late
                page.dispatch_event("input[name=study_date_from]", "change")
                wait_for(lambda: rows.count() == 0, timeout=10, what="the date filter")
                page.fill("input[name=study_date_from]", "")
                page.select_option("select[name=finding]", "")
                wait_for(lambda: rows.count() == 2, timeout=10, what="the unfiltered rows")
                # the 10 s refresh redraws the rows and keeps the reader where they were
                page.set_viewport_size({"width": 1200, "height": 200})
                page.evaluate("window.scrollTo(0, 120)")
                before = page.evaluate("window.scrollY")
                stamp = page.inner_text("#refreshed")
                wait_for(lambda: page.inner_text("#refreshed") != stamp, timeout=30,
                         what="the worklist's refresh")  # (the CSP forbids eval'd waits)
                assert before > 0 and page.evaluate("window.scrollY") == before
                assert rows.count() == 2
                page.set_viewport_size({"width": 1200, "height": 900})

                rows.nth(0).locator("a.open").click()
                page.wait_for_selector("#feedback-form")
                assert page.inner_text("#priority") == "high"
                image = page.locator("figure.key-slice img").first
                image.scroll_into_view_if_needed()
                wait_for(lambda: image.evaluate("i => i.complete && i.naturalWidth") == 512,
                         timeout=30, what="the key slice image")
                page.click("#heat-on")  # where the model looked (Grad-CAM)
                page.wait_for_selector("#heat-off")
                heat = page.locator("figure.key-slice img").last
                assert "/heatmap.png?label=subdural" in (heat.get_attribute("src") or "")
                heat.scroll_into_view_if_needed()
                wait_for(lambda: heat.evaluate("i => i.complete && i.naturalWidth") == 512,
                         timeout=60, what="the heat map image")
                page.screenshot(path=str(tmp_path / "heatmap.png"), full_page=True)
                sr = page.inner_text("#sr-text")  # the SR the node sent, as text
                assert "Subdural hemorrhage: Present" in sr and "Algorithm Name:" in sr
                page.check("input[name=label_subdural][value=present]")
                page.check("input[name=label_epidural][value=absent]")
                page.click("#send-feedback")
                page.wait_for_selector(".feedback-list li")
                assert "subdural present (confirm)" in page.inner_text(".feedback-list")
                page.screenshot(path=str(tmp_path / "study.png"), full_page=True)
            finally:
                browser.close()
        assert blocked == []
        rows_sql = node.query("select s.study_uid, f.label, f.present, f.verdict, f.author "
                              "from feedback f join study s on s.id = f.study_pk "
                              "order by f.label")
        assert rows_sql == [(bleed.study_uid, "epidural", 0, "confirm", "Dr E2E"),
                            (bleed.study_uid, "subdural", 1, "confirm", "Dr E2E")]
        actions = {a for (a,) in node.query("select action from audit_event")}
        assert {"token_create", "login", "worklist_view", "study_view", "image_view",
                "heatmap_view", "feedback"} <= actions
        assert "Dr E2E" not in node.log_text() and token not in node.log_text()
    assert (tmp_path / "worklist.png").stat().st_size > 0
    assert (tmp_path / "study.png").stat().st_size > 0
