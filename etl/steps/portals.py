"""Portal downloads (AMPLIS, MAPS, FIDC, JCOT, Britech, QORE) in headless Chromium, by recipe.

The portal address comes from ``ETL_PORTAL_<PLATFORM>_URL`` and the credentials from the secrets
``<credentials>_username`` / ``<credentials>_password`` (``ETL_SECRET_*`` or the encrypted file);
a request names neither, so a caller can never send the browser, with a password, elsewhere.
Files land in ``ETL_OUTPUT_DIR/<platform>/``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from etl import calendar, portal
from etl.registry import step

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")]


class PortalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: dt.date | None = Field(None, description="Reference day (default: the previous ANBIMA business day).")
    start: dt.date | None = Field(None, description="First day of a range of business days (with `end`).")
    end: dt.date | None = Field(None, description="Last day of the range (inclusive).")
    reports: list[str] | None = Field(None, description="Recipe reports to download (default: the recipe's list).")
    credentials: Name | None = Field(None, description="Secret name prefix: <name>_username and <name>_password.")

    @model_validator(mode="after")
    def _dates(self) -> PortalParams:
        if (self.start is None) != (self.end is None):
            raise ValueError("give start and end together")
        if self.start and self.date:
            raise ValueError("give either date or start/end, not both")
        if self.start and self.end and self.end < self.start:
            raise ValueError("end is before start")
        if self.start and self.end and (self.end - self.start).days > 366:
            raise ValueError("a range may span at most a year")
        return self

    def days(self) -> list[dt.date]:
        if self.start and self.end:
            days = [self.start + dt.timedelta(n) for n in range((self.end - self.start).days + 1)]
            return [d for d in days if calendar.is_business_day(d)]
        return [self.date or calendar.previous_business_day(dt.date.today())]


class FundPortalParams(PortalParams):
    funds: list[Name] = Field(min_length=1, max_length=500, description="Fund codes as the portal names them.")


def _run(platform: str, params: PortalParams, credentials: str, values: dict[str, Any] | None = None,
         **loops: list[Any]) -> dict[str, Any]:
    """Download with one loop per business day (and per fund, query or format where the recipe asks)."""
    days = params.days()
    base = {"date": days[0], "start": params.start or days[0], "end": params.end or days[-1], **(values or {})}
    return portal.download(platform, reports=params.reports, credentials=params.credentials or credentials,
                           values=base, choices={"day": days, **loops})


class AmplisParams(PortalParams):
    account: Literal["reag", "master"] = Field("reag", description="AMPLIS account to log in with.")


@step("amplis_download", AmplisParams, "AMPLIS downloads")
def amplis_download(params: AmplisParams) -> dict[str, Any]:
    """Daily portfolio CSV and PDF, Cotas e Patrimônio and Aplicação e Resgate (may be empty) from AMPLIS."""
    return _run("amplis", params, f"amplis_{params.account}", {"account": params.account})


@step("maps_download", FundPortalParams, "MAPS downloads")
def maps_download(params: FundPortalParams) -> dict[str, Any]:
    """Composição and Posição workbooks and PDFs per fund and business day from MAPS."""
    return _run("maps", params, "maps", fund=params.funds)


@step("fidc_estoque_download", FundPortalParams, "FIDC estoque downloads")
def fidc_estoque_download(params: FundPortalParams) -> dict[str, Any]:
    """Request each fund's receivables stock (estoque) report per business day, wait while it is queued, download it."""
    return _run("fidc", params, "fidc", fund=params.funds)


class JcotParams(PortalParams):
    @model_validator(mode="after")
    def _period(self) -> JcotParams:
        if self.start is None:
            last = self.date or calendar.previous_business_day(dt.date.today())
            self.start, self.end, self.date = last.replace(day=1), last, None
        return self


@step("jcot_download", JcotParams, "JCOT downloads")
def jcot_download(params: JcotParams) -> dict[str, Any]:
    """Cotista positions for a period (default: month to date) from JCOT, as XLSX."""
    return _run("jcot", params, "jcot", {"date": params.end})


class BritechParams(PortalParams):
    queries: list[Name] = Field(min_length=1, max_length=100, description="Saved query names whose grids to export.")


@step("britech_download", BritechParams, "Britech downloads")
def britech_download(params: BritechParams) -> dict[str, Any]:
    """Export the grid of each saved query per business day from Britech."""
    return _run("britech", params, "britech", query=params.queries)


class QoreParams(FundPortalParams):
    formats: list[Literal["pdf", "xlsx", "xml"]] = Field(["pdf", "xlsx", "xml"], min_length=1)


@step("qore_download", QoreParams, "QORE downloads")
def qore_download(params: QoreParams) -> dict[str, Any]:
    """Portfolio (carteira) per fund and business day from QORE as PDF, XLSX and XML."""
    return _run("qore", params, "qore", fund=params.funds, format=list(dict.fromkeys(params.formats)))
