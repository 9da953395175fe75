"""FIDC receivables stock: validate, age and band the stock file, compare with the previous day, report."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from etl import brazil, datasets, money, results, runtime
from etl.errors import EtlError
from etl.maps import plain
from etl.registry import step
from etl.steps.filing import output_folder, safe_name, write_workbook

ESTOQUE_FILE = re.compile(r"^estoque_(?P<fund>.+?)_(?P<date>\d{8})\.csv$", re.IGNORECASE)
AGE_BUCKETS = [(-10**6, 0, "A vencer"), (1, 30, "Vencido 1-30"), (31, 60, "Vencido 31-60"),
               (61, 90, "Vencido 61-90"), (91, 180, "Vencido 91-180"), (181, 360, "Vencido 181-360"),
               (361, 10**6, "Vencido > 360")]
PDD_BANDS = ["A", "B", "C", "D", "E", "F", "G", "H", "WOP"]
MONEY = ["valor_nominal", "valor_presente", "valor_pdd"]


class EstoqueParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: datasets.DataPath = Field("fidc", description="Folder of estoque_<FUNDO>_<yyyymmdd>.csv files (under ETL_INPUT_DIR).")
    fund: str | None = Field(None, description="Fund code (default: the only one in the folder).")
    date: dt.date | None = Field(None, description="Stock date (default: the latest file).")
    read: datasets.ReadOptions = Field(default_factory=datasets.ReadOptions)


def _estoque_files(params: EstoqueParams) -> dict[tuple[str, dt.date], Path]:
    folder = datasets.resolve(params.folder)
    found = {}
    for path in folder.glob("*.csv"):
        if m := ESTOQUE_FILE.match(path.name):
            found[(m["fund"], dt.datetime.strptime(m["date"], "%Y%m%d").date())] = path
    return found


def read_estoque(path: Path, options: datasets.ReadOptions) -> pd.DataFrame:
    frame = datasets.read_table(path, "csv", options)
    frame.columns = [plain(c).replace(" ", "_") for c in frame.columns]
    missing = [c for c in ["seu_numero", "cedente_documento", "sacado_documento", "vencimento", *MONEY, "faixa_pdd"]
               if c not in frame.columns]
    if missing:
        raise EtlError(f"{path.name}: missing column(s) {', '.join(missing)}")
    for column in MONEY:
        frame[column] = money.parse_decimal(frame[column], options.decimal, options.thousands)[0]
    for column in ("vencimento", "data_emissao"):
        if column in frame.columns:
            frame[column] = brazil.parse_date(frame[column])
    frame["faixa_pdd"] = frame["faixa_pdd"].str.strip().str.upper()
    return frame


@step("fidc_estoque", EstoqueParams, "FIDC receivables stock")
def fidc_estoque(params: EstoqueParams) -> dict[str, Any]:
    """Validate, age and total a FIDC estoque; compare with the previous day by seu_numero; Excel + parquet."""
    files = _estoque_files(params)
    funds = sorted({fund for fund, _ in files})
    if not funds:
        raise EtlError(f"no estoque_<FUNDO>_<yyyymmdd>.csv files in {params.folder}")
    fund = params.fund or (funds[0] if len(funds) == 1 else None)
    if fund is None:
        raise EtlError(f"several funds in {params.folder} ({', '.join(funds)}): choose one with 'fund'")
    days = sorted(day for f, day in files if f == fund)
    day = params.date or (days[-1] if days else None)
    if day not in days:
        raise EtlError(f"no estoque file for {fund} on {day} (have: {', '.join(d.isoformat() for d in days)})")
    earlier = [d for d in days if d < day]
    stock = read_estoque(files[(fund, day)], params.read)
    runtime.progress(30, "validating documents and ageing")
    invalid = []
    for column in ("cedente_documento", "sacado_documento"):
        bad = stock[~stock[column].fillna("").map(brazil.document_is_valid)]
        invalid += [{"seu_numero": r["seu_numero"], "coluna": column, "documento": r[column]} for _, r in bad.iterrows()]
    stock["dias_atraso"] = (pd.Timestamp(day) - stock["vencimento"]).dt.days.clip(lower=0).astype("Int64")
    overdue = (pd.Timestamp(day) - stock["vencimento"]).dt.days
    stock["faixa_atraso"] = "A vencer"
    for low, high, label in AGE_BUCKETS[1:]:
        stock.loc[(overdue >= low) & (overdue <= high), "faixa_atraso"] = label
    unknown_bands = sorted(set(stock["faixa_pdd"].dropna()) - set(PDD_BANDS))

    def totals(by: str | list[str]) -> pd.DataFrame:
        grouped = stock.groupby(by, dropna=False)
        out = grouped[MONEY].sum()
        for column in MONEY:
            out[column] = money.narrow(out[column], money.MONEY_SCALE)
        out.insert(0, "quantidade", grouped.size())
        return out.reset_index()

    by_cedente = totals(["cedente_documento", "cedente_nome"] if "cedente_nome" in stock else "cedente_documento")
    by_sacado = totals(["sacado_documento", "sacado_nome"] if "sacado_nome" in stock else "sacado_documento")
    by_band = totals("faixa_pdd")
    by_band["ordem"] = by_band["faixa_pdd"].map({b: i for i, b in enumerate(PDD_BANDS)})
    by_band = by_band.sort_values("ordem").drop(columns="ordem")
    by_age = totals("faixa_atraso")
    by_age["ordem"] = by_age["faixa_atraso"].map({label: i for i, (_, _, label) in enumerate(AGE_BUCKETS)})
    by_age = by_age.sort_values("ordem").drop(columns="ordem")

    movement = pd.DataFrame(columns=["seu_numero", "movimento", "valor_presente"])
    previous_day = earlier[-1] if earlier else None
    if previous_day:
        runtime.progress(60, f"comparing with {previous_day:%d/%m/%Y}")
        before = read_estoque(files[(fund, previous_day)], params.read)
        today_ids, before_ids = set(stock["seu_numero"]), set(before["seu_numero"])
        written_off_now = set(stock.loc[(stock["faixa_pdd"] == "WOP") |
                                        stock.get("situacao", pd.Series(dtype="string")).fillna("").str.contains(
                                            "baixado", case=False), "seu_numero"])
        written_off_before = set(before.loc[before["faixa_pdd"] == "WOP", "seu_numero"])
        rows = ([(n, "novo") for n in sorted(today_ids - before_ids)] +
                [(n, "liquidado") for n in sorted(before_ids - today_ids)] +
                [(n, "baixado") for n in sorted((written_off_now - written_off_before) & before_ids)])
        values = pd.concat([stock, before]).drop_duplicates("seu_numero").set_index("seu_numero")["valor_presente"]
        movement = pd.DataFrame(rows, columns=["seu_numero", "movimento"])
        movement["valor_presente"] = movement["seu_numero"].map(values)
    runtime.progress(80, "writing the report")
    target = output_folder("fidc", safe_name(fund))
    parquet = datasets.write_parquet(stock, target / f"estoque_{fund}_{day:%Y%m%d}.parquet")
    summary = pd.DataFrame([
        ("Fundo", fund), ("Data", day.strftime("%d/%m/%Y")),
        ("Dia anterior", previous_day.strftime("%d/%m/%Y") if previous_day else "—"),
        ("Recebíveis", len(stock)), ("Valor nominal", money.total(stock["valor_nominal"])),
        ("Valor presente", money.total(stock["valor_presente"])), ("PDD", money.total(stock["valor_pdd"])),
        ("Documentos inválidos", len(invalid)),
        ("Novos", int((movement["movimento"] == "novo").sum())),
        ("Liquidados", int((movement["movimento"] == "liquidado").sum())),
        ("Baixados", int((movement["movimento"] == "baixado").sum())),
    ], columns=["Item", "Valor"])
    report = target / f"Estoque_{fund}_{day:%Y%m%d}.xlsx"
    write_workbook(report, {"Resumo": summary, "Por cedente": by_cedente, "Por sacado": by_sacado,
                             "Faixa PDD": by_band, "Atraso": by_age, "Movimentação": movement,
                             "Documentos inválidos": pd.DataFrame(invalid, columns=["seu_numero", "coluna", "documento"]),
                             "Estoque": stock})
    for path in (parquet, report):
        runtime.add_artifact(path)
    counts = movement["movimento"].value_counts().to_dict()
    return {
        "fund": fund, "date": day.isoformat(), "previous_date": previous_day.isoformat() if previous_day else None,
        "receivables": len(stock), "valor_presente": money.json_text(money.total(stock["valor_presente"])),
        "valor_pdd": money.json_text(money.total(stock["valor_pdd"])), "invalid_documents": invalid,
        "unknown_pdd_bands": unknown_bands,
        "movement": {k: int(counts.get(k, 0)) for k in ("novo", "liquidado", "baixado")},
        "histogram_data": {"labels": by_band["faixa_pdd"].tolist(),
                           "values": [money.json_text(v) for v in by_band["valor_presente"]]},
        "calculation_results": results.preview(by_age), "report": str(report), "parquet": str(parquet),
    }
