"""Portfolio PDFs (AMPLIS/QORE): read their facts and file them in each fund's folder."""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from etl import brazil, datasets, runtime
from etl.errors import EtlError
from etl.maps import plain
from etl.registry import step
from etl.steps.filing import MONTHS, output_folder, read_sheet, safe_name

logger = logging.getLogger(__name__)


DATE = r"(\d{2}/\d{2}/\d{4})"
PDF_PATTERNS = {
    "data": re.compile(rf"Data:\s*{DATE}"),
    "carteira": re.compile(r"Carteira:\s*(.+?)\s+-\s"),
    "periodo": re.compile(rf"Per[ií]odo:?\s*{DATE}\s+a\s+{DATE}"),
    "cnpj": re.compile(r"\b([0-9A-Z]{2}\.[0-9A-Z]{3}\.[0-9A-Z]{3}/[0-9A-Z]{4}-\d{2})\b"),
}


class SavePdfsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: datasets.DataPath = Field("pdfs", description="Folder of AMPLIS/QORE portfolio PDFs (under ETL_INPUT_DIR).")
    mapping: datasets.DataPath = Field("mappings/DE_PARA_Carteiras.xlsx",
                         description="'DE PARA' workbook: Carteira, CNPJ, Fundo (the fund's folder).")
    destination: str = Field("fundos", description="Folder under ETL_OUTPUT_DIR holding <fund>/06. Carteiras/...")
    move: bool = Field(False, description="Move the PDFs instead of copying them.")


def pdf_facts(path: Path) -> dict[str, Any]:
    """Data, Carteira, Período and CNPJs found in the first pages' text."""
    import pymupdf

    try:
        with pymupdf.open(path) as doc:
            text = "\n".join(doc[i].get_text() for i in range(min(3, doc.page_count)))
    except Exception as exc:  # PyMuPDF raises its own types for damaged files
        raise EtlError(f"cannot read {path.name} as PDF: {exc}") from None
    facts: dict[str, Any] = {}
    if m := PDF_PATTERNS["data"].search(text):
        facts["data"] = m.group(1)
    if m := PDF_PATTERNS["carteira"].search(text):
        facts["carteira"] = " ".join(m.group(1).split())
    if m := PDF_PATTERNS["periodo"].search(text):
        facts["periodo"] = [m.group(1), m.group(2)]
    facts["cnpjs"] = [c for c in dict.fromkeys(PDF_PATTERNS["cnpj"].findall(text)) if brazil.document_is_valid(c)]
    return facts


@step("save_pdfs", SavePdfsParams, "File portfolio PDFs")
def save_pdfs(params: SavePdfsParams) -> dict[str, Any]:
    """Rename AMPLIS/QORE PDFs to 'dd.mm - Carteira Diária - <carteira>.pdf' and file them per fund; report the rest."""
    folder = datasets.resolve(params.folder)
    mapping = read_sheet(datasets.resolve(params.mapping), "DE PARA")
    by_name = {plain(r["Carteira"]): r["Fundo"] for _, r in mapping.iterrows() if r.get("Carteira")}
    by_cnpj = {brazil.clean_cnpj(pd.Series([r["CNPJ"]])).iloc[0]: r["Fundo"] for _, r in mapping.iterrows()
               if r.get("CNPJ")}
    root = output_folder(safe_name(params.destination))
    filed, unclassified = [], []
    pdfs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".pdf")
    for done, path in enumerate(pdfs):
        runtime.check_stop()
        runtime.progress(100 * done / max(len(pdfs), 1), path.name)
        facts = pdf_facts(path)
        day_text = facts.get("data") or (facts.get("periodo") or [None, None])[1]
        fund = by_name.get(plain(facts.get("carteira", "")))
        if fund is None and facts["cnpjs"]:
            cleaned = brazil.clean_cnpj(pd.Series(facts["cnpjs"], dtype="string"))
            fund = next((by_cnpj[c] for c in cleaned if c in by_cnpj), None)
        reason = None
        if not day_text:
            reason = "no 'Data:' or 'Período' found"
        elif not facts.get("carteira"):
            reason = "no 'Carteira:' found"
        elif fund is None:
            reason = f"carteira {facts['carteira']!r} / CNPJ {', '.join(facts['cnpjs']) or '-'} is not in the DE PARA"
        if reason:
            unclassified.append({"file": path.name, "reason": reason, **facts})
            continue
        day = dt.datetime.strptime(day_text, "%d/%m/%Y").date()
        target_dir = root / safe_name(fund) / "06. Carteiras" / f"{day:%Y}" / f"{day:%m} - {MONTHS[day.month - 1]}"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / safe_name(f"{day:%d.%m} - Carteira Diária - {facts['carteira']}.pdf")
        (shutil.move if params.move else shutil.copy2)(path, target)
        filed.append({"file": path.name, "saved_as": str(target), "fund": fund, "date": day.isoformat()})
    if unclassified:
        logger.warning("%d PDF(s) could not be classified: %s", len(unclassified),
                       ", ".join(u["file"] for u in unclassified))
    return {"pdfs": len(pdfs), "filed": filed, "unclassified": unclassified, "destination": str(root)}
