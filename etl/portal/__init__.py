"""Portal downloads driven by recipes: each platform's navigation is data, not code.

A recipe (``etl/portal/recipes/<platform>.json``, or the same name under ``ETL_RECIPES_DIR`` to
override it for an installation) lists the login actions and, per report, the actions that reach
and download it. Values in ``{name}`` or ``{name:format}`` come from the step's parameters (the
dates take ``strftime`` formats: ``{date:%d/%m/%Y}``). The portal address comes from
``ETL_PORTAL_<PLATFORM>_URL`` (or the recipe's ``base_url``), never from a request, so the
credentials are only ever typed into the configured portal.

Actions: ``open`` (a path under the portal address), ``fill`` + ``value``, ``select`` + ``value``,
``click``, ``wait_for`` (+ ``fail_if``, ``message``), ``poll`` (reload until ``until`` shows; a
queued report), ``download`` (click and save the file as ``save_as``; ``empty_if`` names the
element a portal shows instead when there is legitimately nothing to download).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from etl import runtime, secrets, settings
from etl.browser import Browser, BrowserError, file_download, open_browser, wait_for_download
from etl.errors import EtlError, PortalUnavailable, StepStopped

logger = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parent / "recipes"
TOKEN = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
LOOP_VALUES = Literal["day", "fund", "query", "format"]
# Chromium's network errors that mean the portal is down or unreachable now (worth a retry later).
UNREACHABLE = ("ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET", "ERR_CONNECTION_TIMED_OUT", "ERR_TIMED_OUT",
               "ERR_NAME_NOT_RESOLVED", "ERR_ADDRESS_UNREACHABLE", "ERR_INTERNET_DISCONNECTED",
               "ERR_CONNECTION_CLOSED", "ERR_EMPTY_RESPONSE")


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid")

    open: str | None = None
    fill: str | None = None
    select: str | None = None
    click: str | None = None
    wait_for: str | None = None
    poll: str | None = Field(None, description="Reload the page until this selector shows (a queued report).")
    download: str | None = Field(None, description="Selector of the link or button that downloads the file.")
    value: str | None = None
    save_as: str | None = None
    fail_if: str | None = Field(None, description="Selector whose presence means failure (its text is reported).")
    empty_if: str | None = Field(None, description="Selector the portal shows when there is nothing to download.")
    message: str | None = None
    timeout: float | None = Field(None, gt=0, le=3600)
    interval: float = Field(2.0, gt=0, le=300)

    @model_validator(mode="after")
    def _one_verb(self) -> Action:
        verbs = [v for v in ("open", "fill", "select", "click", "wait_for", "poll", "download") if getattr(self, v)]
        if len(verbs) != 1:
            raise ValueError(f"each action needs exactly one of open/fill/select/click/wait_for/poll/download, "
                             f"got {verbs or 'none'}")
        if (self.fill or self.select) and self.value is None:
            raise ValueError("fill and select need a value")
        if self.download and not self.save_as:
            raise ValueError("download needs save_as")
        return self

    @property
    def verb(self) -> str:
        return next(v for v in ("open", "fill", "select", "click", "wait_for", "poll", "download") if getattr(self, v))


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    for_each: list[LOOP_VALUES] = Field(default_factory=list)
    actions: list[Action] = Field(min_length=1)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    platform: str
    title: str
    base_url: str | None = None
    login: list[Action] = Field(default_factory=list)
    reports: dict[str, Report] = Field(min_length=1)
    default_reports: list[str] = Field(default_factory=list)


def load_recipe(platform: str) -> Recipe:
    """The platform's recipe: ETL_RECIPES_DIR/<platform>.json if present, else the bundled one."""
    override = settings.get_settings().recipes_dir
    path = override / f"{platform}.json" if override else None
    if path is None or not path.is_file():
        path = RECIPES / f"{platform}.json"
    try:
        return Recipe.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise EtlError(f"cannot read the {platform} recipe {path}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EtlError(f"the {platform} recipe {path} is invalid at {where}: {first['msg']}") from None


def render(text: str, values: dict[str, Any]) -> str:
    """Fill ``{name}`` / ``{name:format}`` tokens (no attribute access, unlike str.format)."""

    def fill(match: re.Match[str]) -> str:
        name, spec = match.group(1), match.group(2)
        if name not in values:
            raise EtlError(f"the recipe uses {{{name}}}, which this step does not provide "
                           f"(available: {', '.join(sorted(values))})")
        value = values[name]
        return format(value, spec) if spec else str(value)

    return TOKEN.sub(fill, text)


def portal_url(recipe: Recipe) -> str:
    variable = f"ETL_PORTAL_{recipe.platform.upper()}_URL"
    url = settings.get_settings().portal_urls.get(recipe.platform.lower()) or recipe.base_url
    if not url:
        raise EtlError(f"no address for the {recipe.title} portal: set {variable}")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise EtlError(f"{variable} must be an http(s) address, not {url!r}")
    return url.rstrip("/") + "/"


class Session:
    """Runs one recipe's actions in a browser and collects what was downloaded."""

    def __init__(self, browser: Browser, recipe: Recipe, base_url: str, target_dir: Path):
        self.browser = browser
        self.recipe = recipe
        self.base_url = base_url
        self.target_dir = target_dir.resolve()
        self.files: list[dict[str, Any]] = []
        self.timeout = browser.config["wait_timeout"]

    def _find(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.browser.driver.find_elements(By.CSS_SELECTOR, selector)

    def _wait(self, selector: str, action: Action, *, reload: bool = False) -> Any | None:
        """The first element matching ``selector``; None if ``empty_if`` showed instead."""
        timeout = action.timeout or (self.browser.config["download_timeout"] if reload else self.timeout)
        deadline = time.monotonic() + timeout
        while True:
            if action.fail_if and (failed := self._find(action.fail_if)):
                text = " ".join(failed[0].text.split())[:200]
                raise BrowserError(f"{action.message or 'the portal refused'}: {text}" if text
                                   else action.message or f"the portal showed {action.fail_if}")
            if action.empty_if and self._find(action.empty_if):
                return None
            if found := self._find(selector):
                return found[0]
            if time.monotonic() > deadline:
                what = action.message or f"{selector} did not appear"
                raise BrowserError(f"{what} within {timeout:g} s on {self._page()}")
            if reload:
                runtime.sleep(action.interval)
                self.browser.driver.refresh()
            else:
                runtime.sleep(0.1)

    def _page(self) -> str:
        path = urllib.parse.urlsplit(self.browser.driver.current_url).path
        return path or "the page"

    def run(self, actions: list[Action], values: dict[str, Any], report: str) -> None:
        from selenium.common.exceptions import TimeoutException, WebDriverException
        from selenium.webdriver.support.ui import Select

        driver = self.browser.driver
        for action in actions:
            runtime.check_stop()
            verb = action.verb
            action = action.model_copy(update={
                name: render(getattr(action, name), values)
                for name in ("fill", "select", "click", "wait_for", "poll", "download", "fail_if", "empty_if")
                if getattr(action, name)})
            if verb == "open":
                url = urllib.parse.urljoin(self.base_url, render(action.open, values).lstrip("/"))
                try:
                    driver.get(url)
                except TimeoutException:
                    # Transient: a retry policy may try again later (a wrong password or a missing
                    # element is not: those stay BrowserError).
                    raise PortalUnavailable(f"{urllib.parse.urlsplit(url).path} did not load within "
                                            f"{self.browser.config['page_load_timeout']:g} s") from None
                except WebDriverException as exc:
                    reason = next((r for r in UNREACHABLE if r in (exc.msg or "")), None)
                    if reason is None:
                        raise
                    raise PortalUnavailable(f"{urllib.parse.urlsplit(url).netloc} is unreachable ({reason})") from None
            elif verb == "fill":
                element = self._wait(action.fill, action)
                element.clear()
                element.send_keys(render(action.value, values))
            elif verb == "select":
                Select(self._wait(action.select, action)).select_by_visible_text(render(action.value, values))
            elif verb == "click":
                self._wait(action.click, action).click()
            elif verb == "wait_for":
                self._wait(action.wait_for, action)
            elif verb == "poll":
                self._wait(action.poll, action, reload=True)
            elif verb == "download":
                self._download(action, values, report)

    def _download(self, action: Action, values: dict[str, Any], report: str) -> None:
        target = (self.target_dir / render(action.save_as, values)).resolve()
        if self.target_dir not in target.parents:
            raise EtlError(f"the recipe's save_as {action.save_as!r} leaves the download folder")
        started = time.monotonic()
        element = self._wait(action.download, action)
        if element is None:
            logger.info("%s: nothing to download (%s)", report, target.name)
            self.files.append({"report": report, "file": None, "expected": target.name, "empty": True,
                               "bytes": 0, "seconds": round(time.monotonic() - started, 3)})
            return
        before = self.browser.snapshot()
        element.click()
        downloaded = wait_for_download(self.browser.download_dir, before,
                                       action.timeout or self.browser.config["download_timeout"], target.name)
        saved = file_download(downloaded, target)
        runtime.add_artifact(saved)
        size = saved.stat().st_size
        seconds = round(time.monotonic() - started, 3)
        logger.info("%s: %s (%d bytes, %.2f s)", report, saved.name, size, seconds)
        self.files.append({"report": report, "file": str(saved), "empty": size == 0, "bytes": size,
                           "seconds": seconds})


def loop_values(report: Report, choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the report's ``for_each`` values (one empty combination if none)."""
    lists = []
    for name in report.for_each:
        values = choices.get(name) or []
        if not values:
            raise EtlError(f"report {report.title!r} runs once per {name}, but no {name} was given")
        token = "date" if name == "day" else name  # {date} is filled per day
        lists.append([(token, v) for v in values])
    return [dict(combo) for combo in itertools.product(*lists)]


def download(platform: str, *, reports: list[str] | None, credentials: str, values: dict[str, Any],
             choices: dict[str, list[Any]]) -> dict[str, Any]:
    """Log in to ``platform`` and download ``reports`` (the recipe's defaults if None)."""
    recipe = load_recipe(platform)
    wanted = reports or recipe.default_reports or list(recipe.reports)
    unknown = [r for r in wanted if r not in recipe.reports]
    if unknown:
        raise EtlError(f"unknown {recipe.title} report(s) {', '.join(unknown)} "
                       f"(the recipe has: {', '.join(recipe.reports)})")
    from selenium.common.exceptions import WebDriverException

    base_url = portal_url(recipe)
    values = dict(values)
    values["username"] = secrets.lookup(f"{credentials}_username")
    values["password"] = secrets.lookup(f"{credentials}_password")
    jobs = [(name, combo) for name in wanted for combo in loop_values(recipe.reports[name], choices)]
    work = runtime.work_dir() if runtime.current() else runtime.work_root() / f"{platform}-cli"
    target = runtime.output_dir() / platform
    started = time.monotonic()
    with open_browser(work / "downloads") as browser:
        browser_seconds = round(time.monotonic() - started, 3)
        session = Session(browser, recipe, base_url, target)
        stage = "login"
        try:
            runtime.progress(2, f"logging in to {recipe.title}")
            session.run(recipe.login, values, "login")
            for done, (name, combo) in enumerate(jobs):
                stage = name
                runtime.progress(5 + 90 * done / len(jobs), f"{recipe.reports[name].title} {_describe(combo)}")
                session.run(recipe.reports[name].actions, {**values, **combo}, name)
        except (EtlError, WebDriverException) as exc:
            if runtime.stop_requested():
                raise StepStopped() from None
            browser.save_evidence(work / "evidence", f"{platform}-{stage}")
            if isinstance(exc, WebDriverException):
                message = (exc.msg or str(exc)).splitlines()[0]
                raise BrowserError(secrets.mask_text(f"{recipe.title} {stage}: {message}")) from None
            raise type(exc)(secrets.mask_text(str(exc))) from None
    downloaded = [f for f in session.files if f["file"]]
    return {
        "platform": platform,
        "portal": urllib.parse.urlsplit(base_url).netloc,
        "reports": wanted,
        "files": session.files,
        "downloaded": len(downloaded),
        "empty": sum(1 for f in session.files if f["empty"]),
        "browser_start_seconds": browser_seconds,
        "seconds": round(time.monotonic() - started, 3),
        "output_dir": str(target),
    }


def _describe(combo: dict[str, Any]) -> str:
    return " ".join(f"{v:%d/%m/%Y}" if hasattr(v, "strftime") else str(v) for v in combo.values())
