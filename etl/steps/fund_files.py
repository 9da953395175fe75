"""Reading the files funds exchange: CNAB remittances (bank fixed-width) and Fundos.NET XML reports."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from etl import cnab, xml_reports
from etl.datasets import DataPath, resolve
from etl.registry import step
from etl.samples.funds import SAMPLE_INFORME, SAMPLE_REMITTANCE
from etl.results import dataset_result, money_totals
from etl.steps.workflow import save

logger = logging.getLogger(__name__)


class ReadCnabParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: DataPath = Field(SAMPLE_REMITTANCE, description="The CNAB file under ETL_INPUT_DIR (latin-1, CRLF).")
    layout: str = Field("cnab444", pattern=r"^[A-Za-z0-9_.-]+$",
                        description="Layout name: cnab444 (FIDC receivables), cnab400, cnab240, or one in layout_file.")
    layout_file: DataPath | None = Field(None, description="JSON file of layouts overriding the bundled ones "
                                                           "(same shape as etl/data/cnab_layouts.json).")
    encoding: str = Field("latin-1", max_length=20)


@step("read_cnab", ReadCnabParams, "Read a CNAB file")
def read_cnab(params: ReadCnabParams) -> dict[str, Any]:
    """Read a CNAB 240/400/444 file by layout: detail records as a table (implied cents exact, ddmmyy dates);
    line lengths, record types, sequence numbers and the trailer count are checked (errors name the line)."""
    path = resolve(params.path)
    found = cnab.read_cnab(path, params.layout, resolve(params.layout_file) if params.layout_file else None,
                           params.encoding)
    for warning in found.warnings:
        logger.warning("%s", warning)
    logger.info("%s: %d detail records, totals %s", path.name, len(found.detail), money_totals(found.detail))
    target = save(found.detail, "read_cnab")
    return dataset_result(found.detail, target, source=str(path), layout=params.layout, records=found.records,
                          record_counts=found.counts, line_count=found.line_count, checks=found.checks,
                          warnings=found.warnings)



class ReadXmlReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: DataPath = Field(SAMPLE_INFORME, description="The XML report under ETL_INPUT_DIR (e.g. a Fundos.NET "
                                                        "informe mensal).")
    layout: str = Field("fidc_informe_mensal", pattern=r"^[A-Za-z0-9_.-]+$",
                        description="Layout naming the tables: fidc_informe_mensal, generic, or one in layout_file.")
    layout_file: DataPath | None = Field(None, description="JSON file of layouts overriding the bundled ones "
                                                           "(same shape as etl/data/xml_layouts.json).")
    table: str | None = Field(None, description="The table passed on as `dataset` (default: the layout's first "
                                                "table found).")


@step("read_xml_report", ReadXmlReportParams, "Read an XML fund report")
def read_xml_report(params: ReadXmlReportParams) -> dict[str, Any]:
    """Read a Fundos.NET XML report into named tables (repeated blocks stay distinct rows; decimal commas exact)."""
    path = resolve(params.path)
    report = xml_reports.read_report(path, params.layout, resolve(params.layout_file) if params.layout_file else None)
    for warning in report.warnings:
        logger.warning("%s", warning)
    if params.table is not None and params.table not in report.tables:
        raise xml_reports.XmlReportError(f"{path.name} has no table {params.table!r}; its tables: "
                                         f"{', '.join(report.tables)}")
    tables = {}
    for name, frame in report.tables.items():
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
        tables[name] = {**dataset_result(frame, save(frame, f"read_xml_report_{safe}")), "path": report.paths[name]}
    chosen = params.table or next(iter(tables))
    return {**tables[chosen], "table": chosen, "root": report.root, "tables": tables, "source": str(path),
            "layout": params.layout, "warnings": report.warnings}
