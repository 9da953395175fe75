"""Every ETL step runs through the service with an empty body, on the bundled samples."""

from __future__ import annotations

from etl.steps.comp import CHAIN
from tests.server import Server

WORKFLOW = ("read_csv", "read_excel", "read_parquet", "convert_parquet", "filter", "join", "aggregate", "output",
            "stack", "derive", "read_cnab", "read_xml_report")


def _run_empty(server: Server, step: str) -> dict:
    response = server.client.post(f"/run/{step}")
    assert response.status_code == 202, response.text
    final = server.wait_for(response.json()["task_id"], timeout=120)
    assert final["status"] == "completed", (step, final["error"], final["log_tail"])
    return final


def test_comp_steps_one_by_one_then_the_whole_chain(server: Server):
    for name, _ in CHAIN:
        _run_empty(server, name)
    chain = _run_empty(server, "completeness_control_comp")
    assert chain["progress"] == 100
    output = chain["output"]
    assert output["break_count"] == 5 and output["control"] == "positions_daily"
    assert any(f.endswith(".xlsx") for f in output["files"])
    assert any(path.endswith(".xlsx") for path in chain["artifacts"])
    messages = server.client.get(f"/logs/{chain['task_id']}").json()["lines"]
    assert any("stage 17/17: break_rolling_comp" in line for line in messages)


def test_workflow_steps(server: Server):
    for name in WORKFLOW:
        final = _run_empty(server, name)
        assert final["output"]["row_count"] > 0


def test_steps_catalogue_lists_every_step_with_v1_parameters(server: Server):
    steps = {s["name"]: s for s in server.client.get("/steps").json()["steps"]}
    assert {name for name, _ in CHAIN} | {"completeness_control_comp", *WORKFLOW} <= set(steps)
    assert "expectedRunDate" in steps["read_src_comp"]["parameters"]["properties"]


def test_bad_v1_parameter_is_422(server: Server):
    response = server.client.post("/run/read_src_comp", json={"parameters": {"expectedRunDate": "31/02/2026"}})
    assert response.status_code == 422
    assert "parameters.expectedRunDate" in response.text


def test_a_path_outside_the_data_folders_is_422_at_submit(server: Server):
    def submitted() -> int:
        return sum(server.client.get("/stats").json()["submitted_total"].values())

    before = submitted()
    for step, params in (("read_csv", {"path": "../../../../etc/passwd"}), ("maps_consolidate", {"folder": "/etc"}),
                         ("reading_config_comp", {"rootFileDir": "/"})):
        response = server.client.post(f"/run/{step}", json={"parameters": params})
        assert response.status_code == 422, (step, response.text)
        detail = response.json()["detail"]
        field = next(iter(params))
        assert f"parameters.{field}" in detail and "outside the folders steps may use" in detail, detail
        assert str(server.storage) not in detail  # no server folder is named to the client
    assert submitted() == before  # no task was made
