"""Portal downloads in real headless Chromium against the local test portal (tests/portal.py).

Needs Debian's chromium and chromium-driver (tests/run.sh installs them); without them these
tests fail, naming the missing package. Chromium may only resolve 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from python_calamine import CalamineWorkbook

from etl import browser, registry, runtime
from etl.errors import EtlError, StepStopped
from tests.portal import USERS, Portal
from tests.server import Server

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_ARGS = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


def portal_env(portal: Portal, base: Path) -> dict[str, str]:
    env = {"ETL_OUTPUT_DIR": str(base / "outputs"), "ETL_WORK_DIR": str(base / "runs"),
           "ETL_BROWSER_ARGS": OFFLINE_ARGS, "ETL_BROWSER_WAIT_TIMEOUT": "10", "ETL_BROWSER_DOWNLOAD_TIMEOUT": "20"}
    for platform, (user, password) in USERS.items():
        env[f"ETL_PORTAL_{platform.upper()}_URL"] = portal.url(platform)
        credentials = "amplis_reag" if platform == "amplis" else platform
        env[f"ETL_SECRET_{credentials.upper()}_USERNAME"] = user
        env[f"ETL_SECRET_{credentials.upper()}_PASSWORD"] = password
    return env


@pytest.fixture(scope="module")
def portal():
    for path in (browser.browser_config()["driver"], browser.browser_config()["chromium"]):
        assert Path(path).is_file(), f"{path} is missing: install Debian chromium and chromium-driver (tests/run.sh does)"
    server = Portal().start()
    yield server
    server.stop()


@pytest.fixture
def env(portal: Portal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in portal_env(portal, tmp_path).items():
        monkeypatch.setenv(name, value)
    portal.empty.clear()
    portal.slow.clear()
    portal.requests.clear()
    return tmp_path


def context(base: Path, task_id: str = "t1") -> runtime.TaskContext:
    return runtime.TaskContext(task_id=task_id, input_dir=base, output_dir=base / "outputs", work_root=base / "runs",
                               work_dir=base / "runs" / "tasks" / task_id)


def run(name: str, base: Path, **params):
    step = registry.get_step(name, include_diagnostic=False)
    with runtime.bind(context(base)):
        return step.run(step.params_model.model_validate(params))


def live_browsers(marker: str) -> list[psutil.Process]:
    """Chromium/chromedriver processes (not zombies) whose command line mentions ``marker``."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            line = " ".join(proc.info["cmdline"] or [])
            if marker in line and ("chrom" in (proc.info["name"] or "") or "chrom" in line.split(" ")[0]):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_amplis_downloads_every_report_and_accepts_an_empty_one(env: Path, portal: Portal):
    portal.empty.add("aplicacao-resgate")
    result = run("amplis_download", env, date="2026-02-13")
    by_report = {f["report"]: f for f in result["files"]}
    assert result["downloaded"] == 3 and result["empty"] == 1
    csv = Path(by_report["carteira_csv"]["file"])
    assert csv.name == "2026-02-13 - Carteira Diaria - reag.csv" and csv.parent == env / "outputs" / "amplis" / "reag"
    assert csv.read_bytes().decode("latin-1").startswith("Conta;Data;Valor")
    assert Path(by_report["carteira_pdf"]["file"]).read_bytes().startswith(b"%PDF")
    assert by_report["aplicacao_resgate"] == {**by_report["aplicacao_resgate"], "file": None, "empty": True}
    assert not list((env / "runs" / "tasks" / "t1" / "downloads").iterdir()), "downloads are moved to the outputs"
    assert result["browser_start_seconds"] > 0 and all(f["seconds"] >= 0 for f in result["files"])


def test_maps_downloads_per_fund_and_business_day(env: Path, portal: Portal):
    result = run("maps_download", env, start="2026-02-13", end="2026-02-18", funds=["AGROSAFRA", "CREDSP"],
                 reports=["composicao_xlsx", "posicao_pdf"])
    names = sorted(Path(f["file"]).name for f in result["files"])
    # 16/02 and 17/02 are Carnival: two business days x two funds x two reports
    assert len(names) == 8 and "Composicao_CREDSP_20260218.xlsx" in names and "Posicao_AGROSAFRA_20260213.pdf" in names
    workbook = env / "outputs" / "maps" / "AGROSAFRA" / "Composicao_AGROSAFRA_20260218.xlsx"
    rows = CalamineWorkbook.from_path(str(workbook)).get_sheet_by_index(0).to_python()
    assert any(row and row[0] == "Renda Fixa" for row in rows)


def test_fidc_estoque_waits_while_the_report_is_queued(env: Path, portal: Portal):
    portal.queue_polls = 3
    result = run("fidc_estoque_download", env, date="2026-02-18", funds=["AGROSAFRA"])
    job_pages = [p for p in portal.requests if p.startswith("/fidc/relatorios/estoque/")]
    assert len(job_pages) >= 4, job_pages  # three "na fila" answers, then the link
    text = Path(result["files"][0]["file"]).read_bytes().decode("latin-1")
    assert text.startswith("seu_numero;cedente_documento") and "A vencer" in text


def test_jcot_britech_and_qore_recipes(env: Path, portal: Portal):
    jcot = run("jcot_download", env, start="2026-02-02", end="2026-02-18")
    assert Path(jcot["files"][0]["file"]).name == "posicao_cotistas_20260202_20260218.xlsx"
    portal.empty.add("Vazia")
    britech = run("britech_download", env, date="2026-02-18", queries=["Posicao Diaria", "Vazia"])
    assert britech["downloaded"] == 1 and britech["empty"] == 1
    qore = run("qore_download", env, date="2026-02-18", funds=["CREDSP"], formats=["xml", "pdf"])
    files = {Path(f["file"]).suffix: Path(f["file"]) for f in qore["files"]}
    assert set(files) == {".xml", ".pdf"} and b'fundo="CREDSP"' in files[".xml"].read_bytes()


def test_wrong_password_fails_with_the_portal_message_and_evidence(env: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ETL_SECRET_MAPS_PASSWORD", "wrong-Passw0rd")
    with pytest.raises(EtlError, match="MAPS refused the login: Usuário ou senha inválidos") as raised:
        run("maps_download", env, date="2026-02-13", funds=["AGROSAFRA"])
    assert "wrong-Passw0rd" not in str(raised.value)
    evidence = sorted(p.suffix for p in (env / "runs" / "tasks" / "t1" / "evidence").iterdir())
    assert evidence == [".html", ".png"]


def test_a_slow_page_fails_on_the_page_load_timeout(env: Path, portal: Portal, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ETL_BROWSER_PAGE_LOAD_TIMEOUT", "1.5")
    portal.slow["/amplis/relatorios/carteira"] = 4
    started = time.monotonic()
    with pytest.raises(EtlError, match="did not load within 1.5 s"):
        run("amplis_download", env, date="2026-02-13", reports=["carteira_csv"])
    assert time.monotonic() - started < 15


def test_credentials_and_portal_address_never_come_from_the_request():
    model = registry.get_step("amplis_download", False).params_model
    for extra in ({"password": "x"}, {"portal_url": "http://evil.example"}, {"username": "x"}):
        with pytest.raises(Exception, match="Extra inputs are not permitted"):
            model.model_validate(extra)


def test_stop_kills_the_whole_browser_at_once(env: Path, portal: Portal):
    portal.slow["/amplis/relatorios/carteira"] = 30
    ctx = context(env, "stopme")
    step = registry.get_step("amplis_download", False)
    outcome: dict = {}

    def work() -> None:
        with runtime.bind(ctx):
            try:
                step.run(step.params_model.model_validate({"date": "2026-02-13"}))
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                outcome["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 20
    while "/amplis/relatorios/carteira" not in portal.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    marker = str(env / "runs" / "tasks" / "stopme")
    assert live_browsers(marker), "the browser should be running"
    requested = time.monotonic()
    ctx.request_stop("test")
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome.get("error"), StepStopped), outcome
    assert time.monotonic() - requested < 5
    assert not live_browsers(marker)
    assert not list((env / "runs" / ".browsers").glob("*.json"))


def test_a_browser_left_by_a_killed_worker_is_reaped_at_the_next_start(env: Path):
    script = ("import sys, time\nfrom pathlib import Path\nfrom etl.browser import open_browser\n"
              "with open_browser(Path(sys.argv[1])) as b:\n    print('ready', flush=True)\n    time.sleep(120)\n")
    downloads = env / "orphan" / "downloads"
    child = subprocess.Popen([sys.executable, "-c", script, str(downloads)], cwd=ROOT, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.kill()  # the worker dies without any cleanup
        child.wait()
        marker = str(env / "orphan")
        assert live_browsers(marker), "Chromium outlives a killed worker unless it is reaped"
        records = list((env / "runs" / ".browsers").glob("*.json"))
        assert len(records) == 1 and json.loads(records[0].read_text())["owner_pid"] == child.pid
        assert browser.reap_leftovers() == 1
        deadline = time.monotonic() + 5
        while live_browsers(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live_browsers(marker) and not list((env / "runs" / ".browsers").glob("*.json"))
    finally:
        child.kill()


def test_download_waits_for_partial_files_and_drops_duplicate_suffixes(tmp_path: Path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "old.csv").write_text("x")
    before = {"old.csv"}
    (folder / ".org.chromium.Chromium.abc123").write_text("partial")

    def finish() -> None:
        time.sleep(0.3)
        (folder / ".org.chromium.Chromium.abc123").rename(folder / "carteira (1).csv")

    threading.Thread(target=finish).start()
    started = time.monotonic()
    found = browser.wait_for_download(folder, before, 5, "carteira")
    assert found.name == "carteira (1).csv" and time.monotonic() - started >= 0.3
    saved = browser.file_download(found, tmp_path / "out" / "carteira.csv")
    assert saved.read_text() == "partial" and not found.exists()
    with pytest.raises(browser.BrowserError, match="nothing arrived"):
        browser.wait_for_download(folder, {"old.csv"}, 0.3, "nada")


def test_portal_download_through_the_service(make_server, portal: Portal, tmp_path: Path):
    env = portal_env(portal, tmp_path)
    settings = {k[len("ETL_"):].lower(): v for k, v in env.items() if k not in ("ETL_OUTPUT_DIR", "ETL_WORK_DIR")}
    srv: Server = make_server(**settings)
    task = srv.run("amplis_download", date="2026-02-18", reports=["carteira_csv", "cotas_patrimonio"])
    final = srv.wait_for(task["task_id"], timeout=90)
    assert final["status"] == "completed", final
    output = srv.client.get(f"/output/{task['task_id']}").json()
    assert output["result"]["downloaded"] == 2
    stored = srv.task_file(task["task_id"])
    log = srv.client.get(f"/logs/{task['task_id']}").json()["lines"]
    assert USERS["amplis"][1] not in stored and not any(USERS["amplis"][1] in line for line in log)
