"""One headless Chromium session per task: offline driver, download folder, real kill on stop.

Chromium and chromedriver come from the machine (Debian ``chromium`` and ``chromium-driver`` by
default); Selenium Manager is never asked to download anything. chromedriver starts in its own
process group/session, its PID is recorded under the work folder, and a stop, a timeout or the
end of the task kills the whole tree, so no Chromium survives its task; a later start reaps the
leftovers of a worker that was killed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from etl import runtime, settings
from etl.errors import EtlError, StepStopped
from etl.process import kill_tree

logger = logging.getLogger(__name__)

PARTIAL_SUFFIXES = (".crdownload", ".tmp", ".part")


class BrowserError(EtlError):
    """The browser could not be started or did not do what the recipe asked."""


def _default_paths() -> tuple[str, str]:
    if os.name == "nt":
        return shutil.which("chromedriver") or "chromedriver.exe", ""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    return "/usr/bin/chromedriver", chromium


def browser_config() -> dict[str, Any]:
    """Paths and timeouts from ETL_CHROMEDRIVER_PATH, ETL_CHROMIUM_PATH, ETL_BROWSER_* settings."""
    driver, chromium = _default_paths()
    current = settings.get_settings()
    return {
        "driver": current.chromedriver_path or driver,
        "chromium": current.chromium_path or chromium,
        "page_load_timeout": current.browser_page_load_timeout,
        "wait_timeout": current.browser_wait_timeout,
        "download_timeout": current.browser_download_timeout,
        "extra_args": current.browser_arg_list,
    }


def _pid_dir() -> Path:
    path = runtime.work_root() / ".browsers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def reap_leftovers() -> int:
    """Kill browser trees recorded by tasks whose worker died before it could clean up."""
    reaped = 0
    for record in _pid_dir().glob("*.json"):
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            if _owner_alive(data):
                continue  # a browser of a task that is still running
            proc = psutil.Process(int(data["pid"]))
            if abs(proc.create_time() - float(data["create_time"])) < 1.0:
                _kill_group(proc.pid)
                reaped += 1
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        with contextlib.suppress(OSError):
            record.unlink()
    if reaped:
        logger.warning("killed %d browser(s) left behind by a task whose worker died", reaped)
    return reaped


def _owner_alive(data: dict[str, Any]) -> bool:
    try:
        owner = psutil.Process(int(data["owner_pid"]))
        return abs(owner.create_time() - float(data["owner_create_time"])) < 1.0
    except (psutil.Error, KeyError, ValueError):
        return False


def _kill_group(pid: int) -> None:
    """Kill chromedriver, Chromium and every helper, including any already orphaned."""
    kill_tree(pid)
    if os.name != "nt":
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # the session chromedriver leads: catches reparented helpers


def _partial(name: str) -> bool:
    # Chromium writes into a hidden ".org.chromium.Chromium.*" temp file or "<name>.crdownload" first
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIXES)


def _file_sizes(folder: Path) -> dict[str, int]:
    """Name -> size of the files in ``folder`` now."""
    sizes = {}
    for path in folder.iterdir():
        try:
            info = path.stat()
        except FileNotFoundError:
            continue  # renamed or removed meanwhile: Chromium turns "<name>.crdownload" into "<name>"
        if stat.S_ISREG(info.st_mode):
            sizes[path.name] = info.st_size
    return sizes


def wait_for_download(folder: Path, before: set[str], timeout: float, what: str) -> Path:
    """The file a click just downloaded into ``folder``: new since ``before``, complete and settled."""
    deadline = time.monotonic() + timeout
    seen: tuple[str, int] | None = None
    while True:
        sizes = _file_sizes(folder)
        partial = [n for n in sizes if _partial(n)]
        done = sorted(n for n in sizes.keys() - before if not _partial(n))
        if done and not partial:
            current = (done[0], sizes[done[0]])
            if current == seen:  # the same name and size on two polls in a row
                return folder / done[0]
            seen = current
        else:
            seen = None
        if time.monotonic() > deadline:
            state = f"still downloading {', '.join(partial)}" if partial else "nothing arrived"
            raise BrowserError(f"{what}: download did not finish within {timeout:g} s ({state})")
        runtime.sleep(0.05)


def file_download(downloaded: Path, target: Path) -> Path:
    """Move a finished download to its recipe name, replacing an older copy.

    Whatever Chrome called the file ("report.csv", or "report (1).csv" when the name was taken)
    it ends up under the name the recipe gives it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(downloaded, target)
    return target


class Browser:
    """A started Chromium with its download folder; use :func:`open_browser`."""

    def __init__(self, driver: Any, download_dir: Path, service_pid: int, config: dict[str, Any]):
        self.driver = driver
        self.download_dir = download_dir
        self.service_pid = service_pid
        self.config = config

    def snapshot(self) -> set[str]:
        return {p.name for p in self.download_dir.iterdir()}

    def save_evidence(self, folder: Path, label: str) -> list[Path]:
        """Screenshot and page HTML of the current page, for a failure report."""
        folder.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%H%M%S")
        saved: list[Path] = []
        with contextlib.suppress(Exception):
            png = folder / f"{label}-{stamp}.png"
            if self.driver.save_screenshot(str(png)):
                saved.append(png)
        with contextlib.suppress(Exception):
            html = folder / f"{label}-{stamp}.html"
            html.write_text(self.driver.page_source, encoding="utf-8")
            saved.append(html)
        for path in saved:
            runtime.add_artifact(path)
        return saved


def _options(config: dict[str, Any], download_dir: Path, profile_dir: Path) -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    if config["chromium"]:
        options.binary_location = config["chromium"]
    options.page_load_strategy = "normal"
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--disable-quic", "--window-size=1366,900",
                f"--user-data-dir={profile_dir}"):
        options.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    for arg in config["extra_args"]:
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir),
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
        "plugins.always_open_pdf_externally": True,
        "safebrowsing.enabled": False,
        "profile.default_content_setting_values.automatic_downloads": 1,
    })
    return options


@contextlib.contextmanager
def open_browser(download_dir: Path) -> Iterator[Browser]:
    """Start headless Chromium downloading into ``download_dir``; kill it all on exit or stop."""
    config = browser_config()
    if not Path(config["driver"]).is_file():
        raise BrowserError(f"chromedriver not found at {config['driver']} (install Debian chromium-driver, "
                           "or set ETL_CHROMEDRIVER_PATH)")
    if config["chromium"] and not Path(config["chromium"]).is_file():
        raise BrowserError(f"Chromium not found at {config['chromium']} (install Debian chromium, "
                           "or set ETL_CHROMIUM_PATH)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from urllib3.exceptions import HTTPError

    reap_leftovers()
    download_dir.mkdir(parents=True, exist_ok=True)
    profile_dir = download_dir.parent / f".profile-{os.getpid()}-{time.monotonic_ns()}"
    isolation = ({"creation_flags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
                 else {"start_new_session": True})
    service = Service(executable_path=config["driver"], popen_kw=isolation)
    started = time.monotonic()
    service.start()
    pid = service.process.pid
    record = _pid_dir() / f"{pid}.json"
    me = psutil.Process()
    record.write_text(json.dumps({"pid": pid, "create_time": psutil.Process(pid).create_time(),
                                  "owner_pid": me.pid, "owner_create_time": me.create_time()}), encoding="utf-8")
    try:
        with runtime.on_stop(lambda: _kill_group(pid)):
            driver = webdriver.Chrome(service=service, options=_options(config, download_dir, profile_dir))
            driver.set_page_load_timeout(config["page_load_timeout"])
            driver.set_script_timeout(config["wait_timeout"])
            logger.info("browser started in %.2f s", time.monotonic() - started)
            try:
                yield Browser(driver, download_dir, pid, config)
            finally:
                if not runtime.stop_requested():
                    with contextlib.suppress(Exception):
                        driver.quit()
    except StepStopped:
        raise
    except Exception as exc:
        # A stop kills chromedriver under the step: whatever broke then is the stop, not a failure.
        if runtime.stop_requested():
            raise StepStopped() from None
        if isinstance(exc, EtlError):
            raise
        if isinstance(exc, WebDriverException):
            raise BrowserError(f"browser failed: {(exc.msg or str(exc)).splitlines()[0]}") from None
        if isinstance(exc, (HTTPError, ConnectionError)):
            raise BrowserError(f"lost the connection to the browser: {exc}") from None
        raise
    finally:
        _kill_group(pid)
        with contextlib.suppress(OSError):
            record.unlink()
        shutil.rmtree(profile_dir, ignore_errors=True)
        if sys.exc_info()[0] is None:
            runtime.check_stop()
