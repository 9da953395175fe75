"""The dashboard in real headless Chromium against a real 4-worker Gunicorn with API keys.

Needs Debian's chromium and chromium-driver (tests/run.sh installs them). Chromium may only
resolve 127.0.0.1, so a page that reached for a CDN would render blank and fail here.
Screenshots of every page are saved under the test's tmp folder and checked to be non-blank.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path

import httpx
import pytest

from etl import browser as etl_browser
from tests.scaleout import backend_server
from tests.server import Server

pytestmark = pytest.mark.browser

KEYS = {"viewer": "viewer-key-dash-0001", "operator": "operator-key-dash-0001", "admin": "admin-key-dash-0001"}
NAMES = {"viewer": "ana", "operator": "bob", "admin": "carla"}
OFFLINE_ARGS = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


# Thousands of lines, under the 20,000 a task keeps in scale-out mode (Redis holds them there).
CHATTY = [sys.executable, "-c", "for n in range(15000): print(f'line {n} of a long log')"]
# The dashboard holds in both modes (scale-out: Redis and a worker host behind the same pages).
keyed = backend_server(api_keys=",".join(f"{role}:{NAMES[role]}:{key}" for role, key in KEYS.items()),
                       trustee_commands=json.dumps({"chatty": CHATTY}), probe_headers={"X-API-Key": KEYS["admin"]})


def api(srv: Server, role: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"X-API-Key": KEYS[role]}, timeout=30)


def chromium(profile: Path, lang: str = "en-US"):
    """Headless Chromium from the machine (Debian packages), offline but for 127.0.0.1."""
    config = etl_browser.browser_config()
    for path in (config["driver"], config["chromium"]):
        assert Path(path).is_file(), f"{path} is missing: install Debian chromium and chromium-driver (tests/run.sh does)"
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = config["chromium"]
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-extensions", "--window-size=1280,800",
                f"--lang={lang}", f"--user-data-dir={profile}", OFFLINE_ARGS):
        options.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    options.add_experimental_option("prefs", {"intl.accept_languages": lang})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=config["driver"]), options=options)
    chrome.set_window_size(1280, 800)
    return chrome


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory):
    chrome = chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.quit()


@pytest.fixture(autouse=True)
def _leave_the_dashboard(request: pytest.FixtureRequest):
    """After each test the browser leaves the dashboard for a plain page of the same server (its
    cookies stay as they were): the page's open event stream held up the stop of the module's
    server (when it switches backend, and at the end) by about 5 s."""
    yield
    if {"driver", "keyed"} <= set(request.fixturenames):
        request.getfixturevalue("driver").get(f"{request.getfixturevalue('keyed').url}/livez")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def wait(driver, condition, timeout: float = 20, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message=what)


def find(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def text_of(driver, css: str) -> str:
    found = find(driver, css)
    return found[0].text if found else ""


def distinct_colours(png: bytes) -> int:
    """How many different RGB colours a PNG screenshot holds (decoded here: no imaging library)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, header = 8, b"", None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            data += body
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(data)
    stride = width * channels
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        if row % 8 == 0:
            colours.update(bytes(line[i:i + 3]) for i in range(0, stride, channels * 4))
        previous = line
    return len(colours)


def screenshot(driver, shots: Path, name: str) -> Path:
    path = shots / f"{name}.png"
    png = driver.get_screenshot_as_png()
    path.write_bytes(png)
    assert distinct_colours(png) > 8, f"{path} looks blank"
    return path


def login(driver, srv: Server, role: str) -> None:
    driver.delete_all_cookies()
    driver.get("about:blank")  # a fresh page load (from /ui, a hash change would not reload)
    driver.get(f"{srv.url}/ui#/overview")
    wait(driver, lambda d: find(d, "#login-key"), what="the login form")
    find(driver, "#login-key")[0].send_keys(KEYS[role])
    find(driver, "#login-submit")[0].click()
    wait(driver, lambda d: f"role: {role}" in text_of(d, "#who"), what=f"logged in as {role}")
    assert KEYS[role] not in driver.page_source
    stored = driver.execute_script("return JSON.stringify(Object.assign({}, localStorage, sessionStorage))")
    assert KEYS[role] not in stored


def fetch(driver, method: str, path: str, csrf: bool = True) -> dict:
    """A request from the page itself (cookie auth), with or without the CSRF token."""
    return driver.execute_async_script("""
        const [method, path, csrf, done] = arguments;
        fetch('/ui/session').then((r) => r.json()).then((session) => {
          const headers = csrf ? {'X-CSRF-Token': session.csrf} : {};
          return fetch(path, {method, headers});
        }).then(async (r) => done({status: r.status, body: await r.text()}));
    """, method, path, csrf)


def test_login_sets_a_strict_httponly_cookie_and_the_key_is_not_kept(keyed: Server, driver, shots: Path) -> None:
    driver.delete_all_cookies()
    driver.get(f"{keyed.url}/ui")
    wait(driver, lambda d: find(d, "#login-key"))
    screenshot(driver, shots, "login")
    find(driver, "#login-key")[0].send_keys("not-a-key")
    find(driver, "#login-submit")[0].click()
    wait(driver, lambda d: "not valid" in text_of(d, "#login-error"))
    login(driver, keyed, "viewer")
    cookie = driver.get_cookie("etl_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is False
    assert driver.execute_script("return document.cookie") == ""
    find(driver, "#logout")[0].click()
    # The button hides once the logout answered (the login form may still be on the page before).
    wait(driver, lambda d: find(d, "#login-key") and not find(d, "#logout")[0].is_displayed(), what="logged out")
    answer = fetch(driver, "GET", "/stats")
    assert answer["status"] == 401, answer


def test_viewer_sees_no_stop_or_run_and_is_refused(keyed: Server, driver, shots: Path) -> None:
    with api(keyed, "operator") as operator:
        task_id = keyed.run("diag_sleep", client=operator, seconds=60)["task_id"]
        login(driver, keyed, "viewer")
        wait(driver, lambda d: find(d, "#ov-running"))
        assert not find(driver, "#nav-run")[0].is_displayed()
        driver.get(f"{keyed.url}/ui#/task/{task_id}")
        wait(driver, lambda d: find(d, "#task-status [data-status=running]"))
        assert not find(driver, "#stop-button")
        screenshot(driver, shots, "task-viewer")
        refused = fetch(driver, "POST", f"/stop/{task_id}")
        assert refused["status"] == 403 and "operator role" in refused["body"]
        driver.get(f"{keyed.url}/ui#/run/diag_sleep")
        wait(driver, lambda d: find(d, "#run-denied"))
        assert operator.post(f"/stop/{task_id}").status_code == 202
        keyed.wait_for(task_id)


def test_operator_runs_from_the_form_watches_it_live_and_stops_it(keyed: Server, driver, shots: Path) -> None:
    login(driver, keyed, "operator")
    driver.get(f"{keyed.url}/ui#/run/diag_sleep")
    wait(driver, lambda d: find(d, "#param-seconds"))
    assert [o.text for o in find(driver, "#param-mode option")] == ["cooperative", "ignore_stop", "subprocess"]
    seconds = find(driver, "#param-seconds")[0]
    seconds.clear()
    seconds.send_keys("60")
    every = find(driver, "#param-log_every")[0]
    every.clear()
    every.send_keys("0.3")
    screenshot(driver, shots, "run-form")
    find(driver, "#run-submit")[0].click()
    wait(driver, lambda d: "#/task/" in d.current_url, what="the task page")
    task_id = driver.current_url.rsplit("/", 1)[1]
    wait(driver, lambda d: find(d, "#task-status [data-status=running]"))
    wait(driver, lambda d: "sleeping 60.000 s" in text_of(d, "#task-log"), what="the first log lines")
    first = float(find(driver, "#task-progress")[0].get_attribute("aria-valuenow"))
    wait(driver, lambda d: float(find(d, "#task-progress")[0].get_attribute("aria-valuenow")) > first,
         what="progress moving live")
    wait(driver, lambda d: "line 3" in text_of(d, "#task-log"), what="numbered log lines arriving live")
    assert NAMES["operator"] in text_of(driver, "#fact-requested_by")
    no_csrf = fetch(driver, "POST", f"/stop/{task_id}", csrf=False)
    assert no_csrf["status"] == 403 and "CSRF" in no_csrf["body"]
    screenshot(driver, shots, "task-running")
    find(driver, "#stop-button")[0].click()
    wait(driver, lambda d: find(d, "#task-status [data-status=stopped]"), what="stopped")
    wait(driver, lambda d: NAMES["operator"] in text_of(d, "#fact-stopped_by"), what="who stopped it")
    wait(driver, lambda d: f"task {task_id}: stopped" in text_of(d, "#task-log"), what="a log line arriving live")
    assert "stopped" in text_of(driver, "#task-history")
    screenshot(driver, shots, "task-stopped")
    assert keyed.status(task_id)["stopped_by"]["name"] == NAMES["operator"]


def test_a_422_is_shown_next_to_its_field(keyed: Server, driver, shots: Path) -> None:
    login(driver, keyed, "operator")
    driver.get(f"{keyed.url}/ui#/run/diag_sleep")
    wait(driver, lambda d: find(d, "#param-seconds"))
    seconds = find(driver, "#param-seconds")[0]
    seconds.clear()
    seconds.send_keys("-5")
    find(driver, "#run-submit")[0].click()
    wait(driver, lambda d: text_of(d, "#error-seconds"), what="the field error")
    assert "greater than or equal to 0" in text_of(driver, "#error-seconds")
    assert find(driver, "#param-seconds")[0].get_attribute("aria-invalid") == "true"
    assert text_of(driver, "#error-mode") == ""
    screenshot(driver, shots, "run-422")


def test_tasks_list_updates_live_filters_and_pages(keyed: Server, driver, shots: Path) -> None:
    login(driver, keyed, "viewer")
    driver.get(f"{keyed.url}/ui#/tasks?step=diag_noop")
    wait(driver, lambda d: find(d, "#task-table"))
    wait(driver, lambda d: find(d, "body[data-live=open]"), what="the page's event stream")
    with api(keyed, "operator") as operator:
        task_id = keyed.run("diag_noop", client=operator)["task_id"]
        wait(driver, lambda d: find(d, f'tr[data-task="{task_id}"] [data-status=completed]'), what="a live row")
        ids = [keyed.run("diag_noop", client=operator)["task_id"] for _ in range(30)]
        keyed.wait_for(ids[-1])
    driver.get(f"{keyed.url}/ui#/tasks?step=diag_noop&status=completed")
    wait(driver, lambda d: find(d, "#page-older"))
    first_page = [row.get_attribute("data-task") for row in find(driver, "#task-table tbody tr")]
    assert len(first_page) == 25 and first_page == sorted(first_page, reverse=True)
    assert first_page[0] == ids[-1]
    screenshot(driver, shots, "tasks")
    find(driver, "#page-older")[0].click()
    wait(driver, lambda d: find(d, "#page-newer"))
    second_page = [row.get_attribute("data-task") for row in find(driver, "#task-table tbody tr")]
    assert second_page and not set(second_page) & set(first_page)
    assert max(second_page) < min(first_page)
    driver.get(f"{keyed.url}/ui#/tasks?until=2020-01-01")  # created before that day: none
    wait(driver, lambda d: find(d, "#no-tasks") and find(d, "#no-tasks")[0].is_displayed(), what="no old tasks")
    today = driver.execute_script("const d = new Date(); return d.getFullYear() + '-' + "
                                  "String(d.getMonth() + 1).padStart(2, '0') + '-' + String(d.getDate()).padStart(2, '0')")
    driver.get(f"{keyed.url}/ui#/tasks?from={today}&step=diag_noop")
    wait(driver, lambda d: len(find(d, "#task-table tbody tr")) == 25, what="today's tasks")


def test_overview_numbers_equal_stats_and_admin_cleans_now(keyed: Server, driver, shots: Path) -> None:
    with api(keyed, "admin") as admin:
        ended = [keyed.run("diag_noop", client=admin)["task_id"] for _ in range(3)]
        ended.append(keyed.run("diag_fail", client=admin)["task_id"])
        for task_id in ended:
            keyed.wait_for(task_id)
        login(driver, keyed, "admin")
        stats = admin.get("/stats").json()
        driver.get(f"{keyed.url}/ui#/overview")
        wait(driver, lambda d: find(d, "#ov-running"))
        capacity = stats["capacity"]
        assert text_of(driver, "#ov-running") == f"{capacity['running']:,} / {capacity['max_concurrent_tasks']:,}"
        assert text_of(driver, "#ov-queued") == f"{capacity['queued']:,} / {capacity['max_queued_tasks']:,}"
        assert text_of(driver, "#ov-stored") == f"{stats['tasks']['stored']:,}"
        assert text_of(driver, "#ov-success") == f"{stats['success_rate'] * 100:.1f} %"
        for status, count in stats["tasks"]["by_status"].items():
            assert text_of(driver, f'#ov-by-status li[data-status="{status}"] .num') == f"{count:,}"
        for step, durations in stats["duration_seconds"].items():
            row = find(driver, f'#ov-durations tr[data-step="{step}"] td')
            assert row[1].text == f"{durations['completed']:,}"
        assert len(find(driver, "#ov-workers tbody tr")) == len(stats["workers"])
        assert len(find(driver, "#ov-health li")) == len(keyed.client.get("/health").json()["checks"])
        assert len(find(driver, ".chart rect")) > 0  # tasks ended this hour
        screenshot(driver, shots, "overview")
        find(driver, "#cleanup-now")[0].click()
        wait(driver, lambda d: "removed" in text_of(d, "#cleanup-result"), what="the cleanup outcome")


def test_thousands_of_log_lines_show_a_tail_and_download_in_full(keyed: Server, driver, shots: Path) -> None:
    with api(keyed, "operator") as operator:
        response = operator.post("/run/trustee_run", json={"parameters": {"command": "chatty"}})
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        login(driver, keyed, "viewer")
        driver.get(f"{keyed.url}/ui#/task/{task_id}")  # while it writes its 15,000 lines
        wait(driver, lambda d: "line 14999 of a long log" in text_of(d, "#task-log"), timeout=60, what="the tail")
    total = keyed.status(task_id)["log_lines"]
    assert total > 15_000
    wait(driver, lambda d: f"1,000 of {total:,}" in text_of(d, "#task-log-note"), what="how many lines are shown")
    assert len(find(driver, "#task-log")[0].text.splitlines()) == 1000
    assert driver.execute_script("return 1") == 1  # the page still answers
    download = fetch(driver, "GET", f"/ui/logs/{task_id}")
    assert download["status"] == 200 and len(download["body"].splitlines()) == total
    screenshot(driver, shots, "task-long-log")


def test_phone_width_portuguese_and_time_zone(keyed: Server, driver, shots: Path) -> None:
    with api(keyed, "operator") as operator:
        keyed.wait_for(keyed.run("diag_noop", client=operator)["task_id"])
    login(driver, keyed, "viewer")
    driver.set_window_size(390, 844)
    try:
        driver.get(f"{keyed.url}/ui#/tasks")
        wait(driver, lambda d: find(d, "#task-table"))
        from selenium.webdriver.support.ui import Select

        Select(find(driver, "#lang")[0]).select_by_value("pt-BR")
        wait(driver, lambda d: text_of(d, "#nav a[data-page=overview]") == "Visão geral")
        wait(driver, lambda d: "Tarefas" in text_of(d, "h1") and find(d, "#task-table tbody td"))
        assert "UTC" in find(driver, "#task-table tbody td")[4].text
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone"
        screenshot(driver, shots, "phone-tasks-pt-BR")
        driver.get(f"{keyed.url}/ui#/overview")
        wait(driver, lambda d: find(d, "#ov-running"))
        widest = driver.execute_script("""return [...document.querySelectorAll('main *')]
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5)""")
        assert driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 0, widest
        screenshot(driver, shots, "phone-overview-pt-BR")
    finally:
        driver.execute_script("localStorage.setItem('etl.lang', 'en')")
        driver.set_window_size(1280, 800)


def test_a_portuguese_browser_gets_portuguese(keyed: Server, tmp_path: Path) -> None:
    chrome = chromium(tmp_path / "profile", lang="pt-BR")
    try:
        chrome.get(f"{keyed.url}/ui")
        wait(chrome, lambda d: find(d, "#login-key"))
        assert text_of(chrome, "#login-form h1") == "Entrar"
        assert chrome.execute_script("return document.documentElement.lang") == "pt-BR"
    finally:
        chrome.quit()


def test_the_page_is_keyboard_usable(keyed: Server, driver) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    login(driver, keyed, "operator")
    wait(driver, lambda d: find(d, "#ov-running"))
    reached = []
    for _ in range(12):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        reached.append(driver.execute_script("const a = document.activeElement; return a.id || a.textContent.trim()"))
    assert "Skip to content" in reached and "Tasks" in reached and "nav-run" in reached and "lang" in reached
    while driver.execute_script("return document.activeElement.id") != "nav-run":
        ActionChains(driver).send_keys(Keys.TAB).perform()
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    wait(driver, lambda d: find(d, "#run-step"))


def test_docs_and_redoc_render_offline(keyed: Server, driver, shots: Path) -> None:
    driver.get(f"{keyed.url}/docs")
    wait(driver, lambda d: find(d, ".swagger-ui .info .title"), what="Swagger UI")
    assert "ETL Task API" in text_of(driver, ".swagger-ui .info .title")
    screenshot(driver, shots, "docs")
    driver.get(f"{keyed.url}/redoc")
    wait(driver, lambda d: "ETL Task API" in text_of(d, "h1"), what="ReDoc")
    screenshot(driver, shots, "redoc")


def test_the_page_reconnects_after_a_server_restart(keyed: Server, driver, shots: Path) -> None:
    login(driver, keyed, "viewer")
    driver.get(f"{keyed.url}/ui#/overview")
    wait(driver, lambda d: find(d, "#ov-running"))
    wait(driver, lambda d: find(d, "body[data-live=open]"), what="the page's event stream")
    keyed.stop()
    wait(driver, lambda d: "reconnecting" in text_of(d, "#banner"), what="the reconnecting notice")
    screenshot(driver, shots, "reconnecting")
    # The notice shows for 2.5 s: every text the banner takes is recorded, so a poll that comes
    # late on a busy machine still sees it.
    driver.execute_script(
        "window.bannerTexts = [];"
        "const node = document.getElementById('banner');"
        "new MutationObserver(() => window.bannerTexts.push(node.textContent))"
        ".observe(node, {childList: true, characterData: true, subtree: true});")
    keyed.start()
    wait(driver, lambda d: any("Connected again" in text for text in d.execute_script("return window.bannerTexts")),
         timeout=40, what="the reconnection")
    assert find(driver, "body[data-live=open]")
    errors = [e for e in driver.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert not errors, errors
