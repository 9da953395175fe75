"""Hostile parameters: expression bombs and paths leaving the data folders are refused when the task
is submitted, and nothing outside the folders is ever opened (issue 10, findings 9 and 14)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from pydantic import ValidationError

from etl import expr, registry
from etl.comp.config import ConfigError
from etl.expr import Expression, ExpressionError
from tests.server import ROOT, Server
from tests.steps import run

BOMBS = ["9**9**9**9", "'a' * 10**9", "10**400 * 10**400", "(2**511) ** 3", "'%0999999999d' % 1", "[1] * 10**9",
         "round(5, -10**9)", "1 / 0", "not " * 500 + "x", "x + " * 4000 + "x"]


def test_expression_bombs_are_refused_when_parsed():
    """Finding 9: each bomb is refused by parsing alone, at once (before the fix the first pinned the CPU for hours)."""
    script = (
        "import json, sys\n"
        "from etl.expr import Expression, ExpressionError\n"
        "out = {}\n"
        "for text in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        Expression(text)\n"
        "        out[text] = None\n"
        "    except ExpressionError as exc:\n"
        "        out[text] = str(exc)\n"
        "print(json.dumps(out))\n"
    )
    # A child process, bounded in time: a bomb holds the GIL, so no thread of this process could stop it.
    done = subprocess.run([sys.executable, "-c", script, json.dumps(BOMBS)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    refused = json.loads(done.stdout)
    assert all(refused[text] for text in BOMBS), {t[:40]: m for t, m in refused.items() if not m}
    assert "bits" in refused["9**9**9**9"] and "characters" in refused["'a' * 10**9"]


def test_bounds_hold_on_columns_at_run_time():
    """Finding 9: repetition, formatting and rounding over columns are sized before they are computed."""
    frame = pd.DataFrame({"t": ["abc"] * 1000, "n": [10**6] * 1000, "q": [1.5] * 1000})
    for text, message in [("t * 1000000 == ''", "characters"), ("t * n == ''", "characters"),
                          ("t * 20000 == ''", "characters"),  # 60,000 per value, 60 million in all
                          ("t % 3 == ''", "needs numbers"), ("round(q, n) > 0", "digits")]:
        with pytest.raises(ExpressionError, match=message):
            Expression(text).evaluate(frame)
    with pytest.raises(ExpressionError, match="at most"):
        Expression("x" * (expr.MAX_EXPRESSION_CHARS + 1))
    # What real configs and filters write still works.
    assert Expression("t * 2 == 'abcabc'").evaluate(frame).all()
    assert Expression("round(q ** 2, 2) == 2.25 and t in ['abc', 'x']").evaluate(frame).all()
    assert Expression("2 ** 64 > n and -q < 0 and n % 7 == 1").evaluate(frame).all()


def test_filter_where_is_checked_by_validation():
    """Finding 9: the filter's expression is parsed when its parameters are validated (submit), with its field."""
    model = registry.get_step("filter", include_diagnostic=False).params_model
    for where in ("9**9**9**9 > 0", "quantidade >", "__import__('os')"):
        with pytest.raises(ValidationError) as refused:
            model.model_validate({"where": where})
        assert refused.value.errors()[0]["loc"] == ("where",)
    assert model.model_validate({"where": "quantidade > 0"}).where == "quantidade > 0"


def test_a_bomb_in_a_control_config_fails_when_the_config_is_read(dirs):
    """Finding 9: configs are files read at run time; a bomb in a rule is refused there, with its field path."""
    path = dirs / "inputs" / "controls" / "positions_control.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["rules"][0]["when"] = "'a' * 10**9 == 'a'"  # parsed alone, it was accepted
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rules\.0\.when.*characters"):
        run("reading_config_comp")


def test_config_patterns_never_open_files_outside_the_folders(dirs):
    """Finding 14: a pattern reaching outside through a link matches nothing; the outside file is never parsed."""
    outside = dirs / "elsewhere"
    outside.mkdir()
    (outside / "private.json").write_text(json.dumps({"topsecret_key": 1}), encoding="utf-8")
    (dirs / "inputs" / "controls" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError) as refused:
        run("reading_config_comp", inputConfigFilePattern="link/*.json")
    assert "topsecret_key" not in str(refused.value) and "no control config matches" in str(refused.value)
    model = registry.get_step("reading_config_comp", include_diagnostic=False).params_model
    for field, value in [("inputConfigFilePattern", "../../*.json"), ("inputConfigFilePattern", "/etc/*.json"),
                         ("inputConfigFilePattern", "C:/x/*.json"), ("tempFilePath", str(outside)),
                         ("tempFilePath", "../../..")]:
        with pytest.raises(ValidationError) as bad:
            model.model_validate({field: value})
        assert bad.value.errors()[0]["loc"] == (field,), value
    assert run("reading_config_comp", tempFilePath="my_runs")["run_dir"].startswith(str(dirs / "runs" / "my_runs"))


def test_hostile_parameters_are_422_at_submit(make_server, tmp_path):
    """Findings 9 and 14 over HTTP: refused at POST /run with the field path, never accepted to fail later."""
    srv: Server = make_server(workers=1)
    cases = [
        ("filter", {"where": "9**9**9**9 > 0"}, "parameters.where"),
        ("filter", {"where": "'a' * 10**9 == 'a'"}, "parameters.where"),
        ("reading_config_comp", {"inputConfigFilePattern": "../../../../*.json"}, "parameters.inputConfigFilePattern"),
        ("reading_config_comp", {"inputConfigFilePattern": "/etc/*.json"}, "parameters.inputConfigFilePattern"),
        ("reading_config_comp", {"tempFilePath": str(tmp_path / "elsewhere")}, "parameters.tempFilePath"),
    ]
    for step, parameters, field in cases:
        response = srv.client.post(f"/run/{step}", json={"parameters": parameters})
        assert response.status_code == 422, (parameters, response.text)
        assert [e["field"] for e in response.json()["errors"]] == [field], response.text
    assert srv.client.get("/livez").status_code == 200
    task = srv.run("filter", where="quantidade > 0")
    assert srv.wait_for(task["task_id"])["status"] == "completed"
