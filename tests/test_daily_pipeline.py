"""The bundled daily back-office pipeline end to end: the local test portal in real Chromium, the
SQLite ODBC driver for the load, and the FIDC stock control, through a real Gunicorn."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl import browser, odbc
from tests.portal import Portal
from tests.server import Server
from tests.test_portals import portal_env


@pytest.fixture
def portal():
    for path in (browser.browser_config()["driver"], browser.browser_config()["chromium"]):
        assert Path(path).is_file(), f"{path} is missing: install Debian chromium and chromium-driver (tests/run.sh does)"
    server = Portal().start()
    yield server
    server.stop()


def settings_for(portal: Portal, tmp_path: Path) -> dict[str, str]:
    """The portal's addresses and accounts; outputs under the server's storage folder, named
    explicitly so that a worker host (scale-out mode) writes them where the API host reads them."""
    env = portal_env(portal, tmp_path)
    settings = {k[len("ETL_"):].lower(): v for k, v in env.items() if k not in ("ETL_OUTPUT_DIR", "ETL_WORK_DIR")}
    settings["output_dir"] = str(tmp_path / "task_storage" / "outputs")
    return settings


def test_daily_backoffice_downloads_files_loads_and_controls(make_any_server, portal: Portal, tmp_path: Path):
    srv: Server = make_any_server(**settings_for(portal, tmp_path))
    listed = {p["name"]: p for p in srv.client.get("/pipelines").json()["pipelines"]}
    assert listed["daily_backoffice"]["valid"], listed["daily_backoffice"]["problems"]

    response = srv.client.post("/pipelines/daily_backoffice/run",
                               json={"parameters": {"date": "2026-02-18", "fund": "AGROSAFRA"}})
    assert response.status_code == 202, response.text
    pipeline_id = response.json()["task_id"]
    final = srv.wait_for(pipeline_id, timeout=240)
    nodes = final["pipeline"]["nodes"]
    failed = {n: srv.client.get(f"/output/{v['task_id']}").json().get("error", {}).get("message")
              for n, v in nodes.items() if v["state"] == "failed" and v["task_id"]}
    assert final["status"] == "completed", ({n: (v["state"], v["reason"]) for n, v in nodes.items()}, failed)
    assert final["pipeline"]["summary"]["succeeded"] == 6

    def output(node: str) -> dict:
        return srv.client.get(f"/output/{nodes[node]['task_id']}").json()["result"]

    outputs = srv.storage / "outputs"
    downloaded = outputs / "maps" / "AGROSAFRA" / "Composicao_AGROSAFRA_20260218.xlsx"
    assert downloaded.is_file() and output("download_maps")["files"]
    load = output("load_maps")
    assert load["committed"] and load["inserted"] > 0
    pyodbc = odbc.pyodbc_module()
    with pyodbc.connect(f"DRIVER={{SQLite3}};Database={outputs / 'maps' / 'maps_sample.db'}") as connection:
        rows = connection.execute("SELECT COUNT(*) FROM TB_RENDA_FIXA WHERE FUNDO = 'AGROSAFRA' "
                                  "AND DATA_INPUT = '2026-02-18'").fetchone()[0]
    assert rows == 3, "the downloaded workbook's Renda Fixa rows were loaded through the ODBC driver"
    filed = list((outputs / "maps_arquivo").rglob("18.02 - Composicao - *AGROSAFRA.xlsx"))
    assert filed, "the downloaded workbook was filed by section"
    control = output("control_fidc")
    assert control["date"] == "2026-02-18" and control["receivables"] > 0
    assert output("download_amplis")["downloaded"] == 2
    for name, node in nodes.items():
        child = srv.status(node["task_id"])
        assert child["parent_id"] == pipeline_id and child["node"] == name


def test_an_unreachable_portal_is_retried_by_its_policy_then_becomes_a_dead_letter(make_any_server, portal: Portal,
                                                                                  tmp_path: Path):
    from tests.server import free_port

    settings = settings_for(portal, tmp_path)
    settings["portal_amplis_url"] = f"http://127.0.0.1:{free_port()}/amplis/"  # nothing listens there
    policies = tmp_path / "policies.json"
    policies.write_text('{"amplis_download": {"retry": {"max_attempts": 2, "backoff_seconds": 0.5}}}', encoding="utf-8")
    srv: Server = make_any_server(step_policies_file=policies, **settings)
    task = srv.run("amplis_download", date="2026-02-18", reports=["carteira_csv"])
    final = srv.wait_for(task["task_id"], timeout=120)
    assert final["status"] == "failed" and final["attempt"] == 2, final
    assert final["error"]["type"] == "PortalUnavailable" and "ERR_CONNECTION_REFUSED" in final["error"]["message"]
    assert final["attempts"][0]["error"]["type"] == "PortalUnavailable"
    dead = {d["task_id"] for d in srv.client.get("/dead-letters").json()["dead_letters"]}
    assert task["task_id"] in dead
