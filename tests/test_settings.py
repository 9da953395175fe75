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
