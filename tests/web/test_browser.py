"""The web pages in a real browser: Debian's Chromium, headless, through Selenium.

One walk through what a facilitator does (sign in, the cycle with a lenient grader,
its KR, a what-if, an adjustment with its reason, lock, the audit entry) and what HR
then sees (drift; the owner's achievement final through the API), plus access control.
Screenshots of each page at 1280 and 390 px go to test-artifacts/web/.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.web.conftest import CYCLE, LENIENT, LiveServer, Seeded, screenshot


def _sign_in(driver: Any, server: LiveServer, key: str, path: str) -> None:
    driver.get(server.url + path)
    WebDriverWait(driver, 20).until(ec.presence_of_element_located((By.ID, "signin-form")))
    assert "/ui/signin?next=" in driver.current_url  # no session: sent to sign in
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#signin-form button[type=submit]").click()
    WebDriverWait(driver, 30).until(lambda d: "/ui/signin" not in d.current_url)


def _wait(driver: Any, css: str, timeout: float = 30) -> Any:
    return WebDriverWait(driver, timeout).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_facilitator_session_from_sign_in_to_final(
    browser: Any, live_server: LiveServer, seeded: Seeded
) -> None:
    driver = browser
    _sign_in(driver, live_server, seeded.keys["facilitator"], f"/ui/cycles/{CYCLE}")
    # the session cookie is HttpOnly and SameSite=Strict, and is not the key
    cookie = driver.get_cookie("okrcal_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert seeded.keys["facilitator"] not in cookie["value"]

    # cycle overview: both figures, the runs with the published one marked
    _wait(driver, "#plot-distribution svg")
    assert driver.find_element(By.CSS_SELECTOR, "#plot-variance svg")
    assert driver.find_element(By.ID, "flagged-link").text.startswith("1 grader(s) flagged")
    published = driver.find_elements(By.CSS_SELECTOR, "#runs tr.published")
    assert len(published) == 1
    assert seeded.run_id in published[0].text
    screenshot(driver, "01-overview")

    # graders: the lenient grader is flagged in the plot and in the table
    driver.find_element(By.LINK_TEXT, "Graders").click()
    _wait(driver, "#plot-caterpillar svg")
    marks = driver.find_elements(
        By.CSS_SELECTOR, f"#plot-caterpillar svg g[id='flagged-{LENIENT}']"
    )
    assert len(marks) == 1, "the lenient grader's mark is not drawn as flagged"
    assert not driver.find_elements(By.CSS_SELECTOR, "#plot-caterpillar svg g[id='flagged-g0']")
    row = driver.find_element(By.CSS_SELECTOR, f"#graders tr[data-grader='{LENIENT}']")
    assert row.get_attribute("data-flag") == "lenient"
    assert "flagged" in (row.get_attribute("class") or "")
    flagged_rows = driver.find_elements(By.CSS_SELECTOR, "#graders tr.flagged")
    assert [r.get_attribute("data-grader") for r in flagged_rows] == [LENIENT]
    png = driver.find_element(By.CSS_SELECTOR, "#plot-caterpillar a[href*='caterpillar.png']")
    assert png.get_attribute("download") is not None
    screenshot(driver, "02-graders")

    # downloads: the same figure as PNG and SVG, fetched with the browser's session cookie
    jar = {"okrcal_session": cookie["value"]}
    with httpx.Client(base_url=live_server.url, cookies=jar) as client:
        got_png = client.get(f"/ui/cycles/{CYCLE}/plots/caterpillar.png")
        got_svg = client.get(f"/ui/cycles/{CYCLE}/plots/caterpillar.svg")
    assert got_png.status_code == 200
    assert got_png.content.startswith(b"\x89PNG")
    assert got_svg.status_code == 200
    assert b"<svg" in got_svg.content
    assert f'id="flagged-{LENIENT}"'.encode() in got_svg.content

    # a KR the lenient grader graded, from the overview's largest moves
    driver.find_element(By.LINK_TEXT, CYCLE).click()
    link = _wait(driver, "#gaps tbody tr a")
    kr_id = link.text
    link.click()
    _wait(driver, "#plot-kr svg")
    assert driver.find_element(By.ID, "kr-id").text == kr_id
    assert driver.find_elements(By.CSS_SELECTOR, "#evidence-reasons li")
    levels = driver.find_elements(By.CSS_SELECTOR, "#anchors ol.levels li")
    assert len(levels) == 4
    assert all(li.find_element(By.TAG_NAME, "p").text for li in levels)
    graders = [
        r.find_element(By.TAG_NAME, "td").text
        for r in driver.find_elements(By.CSS_SELECTOR, "#grades tbody tr")
    ]
    assert LENIENT in graders
    assert driver.find_element(By.ID, "calibrated-grade").text not in ("", "–")
    assert driver.find_element(By.ID, "outcome").text
    screenshot(driver, "03-kr")

    # open a session on every owner of the published run
    driver.find_element(By.LINK_TEXT, "Sessions").click()
    _wait(driver, "#create-session")
    screenshot(driver, "04-sessions")
    driver.find_element(By.ID, "title").send_keys("Q3 calibration")
    driver.find_element(By.CSS_SELECTOR, "#create-session button").click()
    _wait(driver, "#agenda")
    session_url = driver.current_url
    first = driver.find_element(By.CSS_SELECTOR, "ol.agenda > li")
    assert first.get_attribute("data-kind") == "flagged_grader"
    assert first.get_attribute("data-subject") == LENIENT

    # what-if: the KR nearest below the 0.7 boundary graded 1.0 by everyone crosses it
    scores = driver.find_elements(By.CSS_SELECTOR, "#scores tbody tr")
    candidates = []
    for r in scores:
        cells = [c.text for c in r.find_elements(By.TAG_NAME, "td")]
        if cells[3] not in ("", "–") and 0.3 <= float(cells[3]) < 0.7:
            candidates.append((0.7 - float(cells[3]), cells[0], cells[1]))
    _, target_kr, owner = min(candidates)
    Select(driver.find_element(By.ID, "wi-type")).select_by_value("override_grade")
    driver.find_element(By.ID, "wi-kr").send_keys(target_kr)
    driver.find_element(By.ID, "wi-grade").send_keys("1.0")
    driver.find_element(By.CSS_SELECTOR, "#whatif-form button").click()
    _wait(driver, "#whatif-result")
    crossing = driver.find_element(By.CSS_SELECTOR, f"#whatif-krs tr[data-kr='{target_kr}']")
    assert crossing.get_attribute("data-crosses") == "yes"
    assert int(driver.find_element(By.ID, "crossings-count").text) >= 1
    screenshot(driver, "05-session-whatif")

    # an adjustment needs its reason: without a comment the server refuses and says why
    Select(driver.find_element(By.ID, "adj-kr")).select_by_value(target_kr)
    driver.find_element(By.ID, "adj-grade").send_keys("0.8")
    Select(driver.find_element(By.ID, "adj-reason")).select_by_value("evidence")
    driver.execute_script("document.getElementById('adj-comment').removeAttribute('required')")
    driver.find_element(By.CSS_SELECTOR, "#adjust-form button").click()
    error = _wait(driver, "#adjust-error")
    assert error.text.startswith("comment:")
    assert not driver.find_elements(By.CSS_SELECTOR, "#adjustment-list tr[data-kr]")
    driver.find_element(By.ID, "adj-comment").send_keys("Launch evidence reviewed in the room")
    driver.find_element(By.CSS_SELECTOR, "#adjust-form button").click()
    _wait(driver, "#done")
    adjusted = driver.find_element(By.CSS_SELECTOR, f"#adjustment-list tr[data-kr='{target_kr}']")
    assert "Launch evidence reviewed in the room" in adjusted.text
    assert "0.8" in adjusted.text

    # before the lock the owner is not final
    hr = {"Authorization": f"Bearer {seeded.keys['hr']}"}
    owner_path = f"/v1/orgs/{seeded.org}/cycles/{CYCLE}/owners/{quote(owner, safe='')}"
    with httpx.Client(base_url=live_server.url, headers=hr) as client:
        assert client.get(owner_path).json()["state"] == "published-provisional"

    # lock; the audit log shows every step
    driver.find_element(By.ID, "lock-comment").send_keys("room agreed")
    driver.find_element(By.ID, "lock-confirm").click()
    driver.find_element(By.CSS_SELECTOR, "#lock-form button").click()
    # the adjustment's page already has a #done: wait for the locked page itself
    WebDriverWait(driver, 30).until(
        ec.text_to_be_present_in_element((By.ID, "session-status"), "locked")
    )
    assert driver.find_element(By.ID, "session-status").text == "locked"
    assert not driver.find_elements(By.ID, "adjust-form")
    kinds = [
        r.get_attribute("data-type")
        for r in driver.find_elements(By.CSS_SELECTOR, "#audit-log tr[data-type]")
    ]
    assert kinds == ["session.created", "whatif.previewed", "adjustment.set", "session.locked"]
    entry = driver.find_element(By.CSS_SELECTOR, "#audit-log tr[data-type='adjustment.set']")
    assert target_kr in entry.text
    assert "facilitator" in entry.text
    assert driver.current_url.startswith(session_url)
    screenshot(driver, "06-session-locked")

    # the owner's achievement is final through the API, with the adjustment folded in
    facilitator = {"Authorization": f"Bearer {seeded.keys['facilitator']}"}
    session_id = session_url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    with httpx.Client(base_url=live_server.url) as client:
        final = client.get(owner_path, headers=hr).json()
        scores_api = client.get(
            f"/v1/orgs/{seeded.org}/cycles/{CYCLE}/sessions/{session_id}/scores",
            headers=facilitator,
        ).json()
    assert final["state"] == "final"
    with httpx.Client(base_url=live_server.url, cookies=jar) as client:
        csv_url = driver.find_element(By.ID, "audit-csv").get_attribute("href")
        exported = client.get(csv_url)
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.text.count("\n") == 5  # the header and the four entries
    assert "adjustment.set" in exported.text
    mine = [s["final_grade"] for s in scores_api if s["owner_id"] == owner]
    assert abs(final["achievement"] - sum(mine) / len(mine)) < 1e-9
    assert target_kr in (final["reason"] or "")


def test_hr_sees_drift(browser: Any, live_server: LiveServer, seeded: Seeded) -> None:
    driver = browser
    _sign_in(driver, live_server, seeded.keys["hr"], "/ui/drift")
    _wait(driver, "#plot-drift svg")
    rows = driver.find_elements(By.CSS_SELECTOR, "#drifting tr[data-grader]")
    assert rows
    assert rows[0].get_attribute("data-grader") == LENIENT
    assert "more lenient" in rows[0].text
    assert driver.find_elements(By.CSS_SELECTOR, f"#plot-drift svg g[id='flagged-{LENIENT}']")
    screenshot(driver, "07-drift")
    # one grader's history with its band, from the ranked list
    rows[0].find_element(By.TAG_NAME, "a").click()
    _wait(driver, "#plot-drift-grader svg")
    assert driver.find_element(By.ID, "grader-id").text == LENIENT
    assert len(driver.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 4
    screenshot(driver, "08-drift-grader")
    # a grader with no history: a clear 404 page
    driver.get(f"{live_server.url}/ui/drift/graders/nobody")
    assert driver.find_element(By.ID, "error-title").text.startswith("404")
    assert "no history" in driver.find_element(By.ID, "error-message").text
    # HR's key cannot open the graders page (scores:read): a 403 page that names the scope
    driver.get(f"{live_server.url}/ui/cycles/{CYCLE}/graders")
    assert driver.find_element(By.ID, "error-title").text.startswith("403")
    assert "scores:read" in driver.find_element(By.ID, "error-message").text


def test_key_without_scope_is_refused(
    browser: Any, live_server: LiveServer, seeded: Seeded
) -> None:
    driver = browser
    _sign_in(driver, live_server, seeded.keys["writer"], "/ui/cycles")
    assert driver.find_element(By.ID, "error-title").text.startswith("403")
    screenshot(driver, "09-refused")
    # signing out ends the session: pages send to sign-in again
    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    _wait(driver, "#signin-form")
    driver.get(f"{live_server.url}/ui/cycles/{CYCLE}")
    assert "/ui/signin?next=" in driver.current_url
    screenshot(driver, "00-signin")
