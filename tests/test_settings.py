"""Settings are validated at start: a bad value is one clear line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from api.settings import Settings, load_settings, SettingsError
from tests.server import ROOT


def _start(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    return subprocess.run([sys.executable, *command], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"ETL_PORT": "eighty"}, "ETL_PORT"),
        ({"ETL_TASK_TTL_HOURS": "-1"}, "ETL_TASK_TTL_HOURS"),
        ({"ETL_WORKERS": "0"}, "ETL_WORKERS"),
        ({"ETL_HOST": "0.0.0.0"}, "without API keys"),
        ({"ETL_API_KEYS": "superuser:abc"}, "role"),
        ({"ETL_CLEANUP_INTERVAL_SECONDS": "1e308"}, "ETL_CLEANUP_INTERVAL_SECONDS"),
        # The steps' settings too (etl/settings.py): before, each failed every task that read it, at task time.
        ({"ETL_BROWSER_WAIT_TIMEOUT": "thirty"}, "ETL_BROWSER_WAIT_TIMEOUT"),
        ({"ETL_TRUSTEE_COMMANDS": "{not json"}, "ETL_TRUSTEE_COMMANDS"),
        ({"ETL_PORTAL_AMPLIS_URL": "ftp://portal.example"}, "ETL_PORTAL_AMPLIS_URL"),
        ({"ETL_SECRETS_KEY": "not-a-key"}, "ETL_SECRETS_KEY"),
    ],
)
@pytest.mark.parametrize("entry", [("-m", "api", "prepare"), ("-m", "gunicorn", "-c", "gunicorn.conf.py")])
def test_bad_settings_stop_the_start_with_one_clear_line(tmp_path, env, words, entry):
    result = _start({"ETL_STORAGE_DIR": str(tmp_path / "s"), **env}, *entry)
    assert result.returncode != 0
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_fractions_and_derived_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("ETL_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("ETL_TASK_TTL_HOURS", "0.5")
    monkeypatch.setenv("ETL_CLEANUP_INTERVAL_SECONDS", "2.5")
    settings = load_settings()
    assert settings.task_ttl_seconds == 1800 and settings.cleanup_interval_seconds == 2.5
    assert settings.output_dir == tmp_path / "outputs" and settings.work_dir == tmp_path / "runs"


def test_public_bind_needs_keys(monkeypatch):
    monkeypatch.setenv("ETL_HOST", "0.0.0.0")
    with pytest.raises(SettingsError, match="without API keys"):
        load_settings()
    monkeypatch.setenv("ETL_API_KEYS", "admin:k")
    assert load_settings().host == "0.0.0.0"
    assert isinstance(load_settings(), Settings)


def test_the_windows_launcher_needs_neither_gunicorn_nor_posix_modules():
    # start_server.bat runs `python -m api serve`: Gunicorn, its worker class and fcntl/pwd/grp
    # are not there on Windows, so nothing on that path may import them.
    blocked = ("fcntl", "pwd", "grp", "gunicorn", "uvicorn_worker", "uvloop")
    code = (f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
            "import api.__main__, api.launcher, api.main\nfrom etl import registry\nregistry.load_steps()\nprint('imported')")
    result = _start({}, "-c", code)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


def test_unknown_etl_names_are_named_at_start(tmp_path):
    """A typo in an ETL_* name is logged at start; secrets and portal addresses are names by pattern."""
    result = _start({"ETL_STORAGE_DIR": str(tmp_path / "s"), "ETL_WORKERZ": "2", "ETL_SECRET_DB_PASS": "x",
                     "ETL_PORTAL_AMPLIS_URL": "https://portal.example", "ETL_BROWSER_WAIT_TIMEOUT": "5",
                     "ETL_URL": "http://127.0.0.1:8000"},  # the client's, not a typo
                    "-m", "api", "prepare")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "unknown setting" in line]
    assert len(warnings) == 1 and "ETL_WORKERZ" in warnings[0], result.stderr
    assert "ETL_SECRET_DB_PASS" not in warnings[0] and "ETL_PORTAL" not in warnings[0] and "ETL_URL" not in warnings[0]
    assert "not-a-key" not in _start({"ETL_SECRETS_KEY": "not-a-key"}, "-m", "api", "prepare").stderr


def test_etl_settings_follow_the_environment_without_the_api(tmp_path, monkeypatch):
    """etl reads its settings object (env and .env), also from python -m etl without the server."""
    from etl import runtime, settings

    monkeypatch.setenv("ETL_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("ETL_BROWSER_WAIT_TIMEOUT", "2.5")
    assert settings.get_settings().browser_wait_timeout == 2.5
    assert runtime.default_dirs()[2] == tmp_path / "runs"
    monkeypatch.setenv("ETL_BROWSER_WAIT_TIMEOUT", "soon")
    with pytest.raises(settings.SettingsError, match="ETL_BROWSER_WAIT_TIMEOUT"):
        settings.get_settings()
    done = _start({"ETL_TRUSTEE_COMMANDS": "[1]"}, "-m", "etl", "trustee_run")
    assert done.returncode != 0 and "ETL_TRUSTEE_COMMANDS" in done.stderr and "Traceback" not in done.stderr


def test_log_level_applies_to_the_steps_loggers(make_server):
    """ETL_LOG_LEVEL=WARNING keeps a step's INFO lines out of the server log (they were forced to INFO);
    the task's own log keeps them."""
    srv = make_server(workers=1, log_level="WARNING")
    task = srv.run("diag_sleep", seconds=0.05)
    assert srv.wait_for(task["task_id"])["status"] == "completed"
    lines = srv.client.get(f"/logs/{task['task_id']}").json()["lines"]
    assert any("sleeping" in line for line in lines), lines
    srv.stop()
    assert "sleeping" not in srv.log_text() and " INFO " not in srv.log_text().replace("ACCESS", "")


def test_a_bad_step_policies_file_stops_the_start_naming_the_step_and_field(tmp_path):
    import pytest

    from api.settings import Settings
    from api.startup import StartupError, prepare_storage

    policies = tmp_path / "policies.json"
    policies.write_text('{"maps_download": {"retry": {"max_attempts": 0}}}', encoding="utf-8")
    with pytest.raises(StartupError, match=r"step maps_download: retry\.max_attempts"):
        prepare_storage(Settings(storage_dir=tmp_path / "st", step_policies_file=policies))
