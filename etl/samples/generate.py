"""Regenerate the bundled sample files: ``python -m etl.samples.generate``.

A positions reconciliation for two business days around Carnival 2026 (Friday 13/02 and
Wednesday 18/02; 16/02 and 17/02 are ANBIMA holidays): the administrator's XLSX (header block,
Brazilian formats, subtotal and total rows) against an internal ';'-separated latin-1 CSV, plus a
"DE PARA" workbook of fund names. Breaks of every kind are planted (see PLANTED).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import xlsxwriter

HERE = Path(__file__).resolve().parent
DAYS = (dt.date(2026, 2, 13), dt.date(2026, 2, 18))

FUNDS = {
    "11222333000181": "FIDC Agro Safra Ação",
    "12ABC34501DE35": "FIM Crédito Privado São Paulo",
    "34028316000103": "FIC FIA Índice Brasil",
}

# fund, asset, description, type, quantity, price
POSITIONS = [
    ("11222333000181", "LTN20290101", "LTN 01/01/2029", "Renda Fixa", 1500, 712.345678),
    ("11222333000181", "NTNB20350515", "NTN-B 15/05/2035", "Renda Fixa", 820, 4312.118201),
    ("11222333000181", "CDBBCOXPTO26", "CDB Banco Xpto 2026", "Renda Fixa", 300, 1043.50),
    ("11222333000181", "COMPROM0218", "Compromissada LFT", "Compromissada", 1000, 1500.00),
    ("12ABC34501DE35", "DEB-VALE29", "Debênture Vale 2029", "Renda Fixa", 250, 1102.40),
    ("12ABC34501DE35", "CRI-LOGIS27", "CRI Logística 2027", "Renda Fixa", 400, 987.65),
    ("12ABC34501DE35", "COTAS-DI-REF", "Cotas FI Referenciado DI", "Cotas de Fundos", 10000, 1.108762),
    ("12ABC34501DE35", "CAIXA", "Saldo em conta", "Caixa", 1, 1995.88),
    ("34028316000103", "PETR4", "Petrobras PN", "Ações", 5000, 38.21),
    ("34028316000103", "VALE3", "Vale ON", "Ações", 3200, 61.07),
    ("34028316000103", "ITUB4", "Itaú Unibanco PN", "Ações", 4100, 33.90),
    ("34028316000103", "BOVA11", "ETF Ibovespa", "Cotas de Fundos", 900, 125.31),
    ("34028316000103", "OPC-ZERO", "Opção vencida", "Derivativos", 0, 0.0),
]

# What differs between the two files, per day (asset -> change in the internal CSV).
PLANTED = {
    DAYS[0]: {
        "CDBBCOXPTO26": "missing_in_target",  # resolved on the 18th
        "ITUB4": "value_beyond_tolerance",  # persists on the 18th
        "COMPROM0218": "missing_in_target",  # explained by the repo rule; persists
    },
    DAYS[1]: {
        "ITUB4": "value_beyond_tolerance",
        "COMPROM0218": "missing_in_target",
        "DEB-VALE29": "missing_in_target",  # new, unexplained
        "EXTRA-LFT30": "missing_in_source",  # new
        "VALE3": "value_within_tolerance",
        "COTAS-DI-REF": "quota_priced_d_minus_1",  # explained by the quota rule
    },
}


def _admin_xlsx(day: dt.date, path: Path) -> None:
    book = xlsxwriter.Workbook(path)
    sheet = book.add_worksheet("Carteira")
    money = book.add_format({"num_format": "#,##0.00"})
    price = book.add_format({"num_format": "#,##0.000000"})
    bold = book.add_format({"bold": True})
    total_pl = sum(q * p for _, _, _, _, q, p in POSITIONS)
    header_block = [
        ["Carteira Diária"], ["Administrador: REAG Distribuidora de Títulos e Valores Mobiliários S.A."],
        [f"Data: {day:%d/%m/%Y}"], ["Patrimônio Líquido (PL)", f"R$ {total_pl:,.2f}".replace(",", "X").replace(".", ",")
                                    .replace("X", ".")],
        ["Moeda", "BRL"], [], ["Observação: valores em reais; '—' indica zero."], [],
    ]
    for row, values in enumerate(header_block):
        for col, value in enumerate(values):
            sheet.write(row, col, value, bold if col == 0 else None)
    header = ["CNPJ Fundo", "Código", "Descrição", "Tipo", "Quantidade", "Preço", "Valor Financeiro"]
    start = len(header_block)
    sheet.write_row(start, 0, header, bold)
    row = start + 1
    current_type = None
    subtotal = 0.0
    for fund, asset, description, kind, quantity, unit in POSITIONS:
        if current_type and kind != current_type:
            sheet.write_row(row, 0, [f"Subtotal {current_type}", None, None, None, None, None])
            sheet.write_number(row, 6, subtotal, money)
            row, subtotal = row + 1, 0.0
        current_type = kind
        cnpj = f"{fund[:2]}.{fund[2:5]}.{fund[5:8]}/{fund[8:12]}-{fund[12:]}"
        value = round(quantity * unit, 2)
        sheet.write_string(row, 0, cnpj)
        sheet.write_string(row, 1, asset)
        sheet.write_string(row, 2, description)
        sheet.write_string(row, 3, kind)
        if quantity == 0:
            sheet.write_string(row, 4, "—")
            sheet.write_string(row, 5, "—")
            sheet.write_string(row, 6, "—")
        else:
            sheet.write_number(row, 4, quantity)
            sheet.write_number(row, 5, unit, price)
            if asset == "CAIXA":  # typed as text, as some administrators export it
                sheet.write_string(row, 6, "R$ 1.995,88")
            else:
                sheet.write_number(row, 6, value, money)
        subtotal += value
        row += 1
    sheet.write_row(row, 0, [f"Subtotal {current_type}"])
    sheet.write_number(row, 6, subtotal, money)
    sheet.write_row(row + 1, 0, ["Total"], bold)
    sheet.write_number(row + 1, 6, total_pl, money)
    sheet.write_row(row + 3, 0, ["Documento gerado automaticamente."])
    sheet.set_column(0, 0, 22)
    sheet.set_column(1, 6, 16)
    book.close()


def _brazilian(value: float, decimals: int = 2) -> str:
    return f"{value:,.{decimals}f}".replace(",", "X").replace(".", ",").replace("X", ".")


def _internal_csv(day: dt.date, path: Path) -> None:
    changes = PLANTED[day]
    lines = ["cnpj_fundo;codigo_ativo;descrição;quantidade;valor_mercado;data_posicao"]
    for fund, asset, description, _kind, quantity, unit in POSITIONS:
        change = changes.get(asset)
        if change == "missing_in_target" or quantity == 0:
            continue
        value = round(quantity * unit, 2)
        if change == "value_beyond_tolerance":
            value += 150.00
        elif change == "value_within_tolerance":
            value += 0.05
        elif change == "quota_priced_d_minus_1":
            value -= 12.34
        cnpj = f"{fund[:2]}.{fund[2:5]}.{fund[5:8]}/{fund[8:12]}-{fund[12:]}"
        lines.append(f"{cnpj};{asset};{description};{_brazilian(quantity, 0)};{_brazilian(value, 2)};{day:%d/%m/%Y}")
    if "EXTRA-LFT30" in changes:
        lines.append(f"11.222.333/0001-81;EXTRA-LFT30;LFT 01/03/2030;200;3.456.789,01;{day:%d/%m/%Y}")
    # latin-1 with CRLF line ends, as the internal system exports it.
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))


def _de_para(path: Path) -> None:
    book = xlsxwriter.Workbook(path)
    sheet = book.add_worksheet("DE PARA")
    sheet.write_row(0, 0, ["CNPJ", "Nome do Fundo", "Gestor"])
    for row, (cnpj, name) in enumerate(FUNDS.items(), start=1):
        sheet.write_row(row, 0, [f"{cnpj[:2]}.{cnpj[2:5]}.{cnpj[5:8]}/{cnpj[8:12]}-{cnpj[12:]}", name, "Gestora Alfa"])
    book.close()


def main() -> None:
    for folder in ("positions/admin", "positions/internal", "lookups", "controls"):
        (HERE / folder).mkdir(parents=True, exist_ok=True)
    for day in DAYS:
        _admin_xlsx(day, HERE / "positions" / "admin" / f"Carteira_Diaria_{day:%Y%m%d}.xlsx")
        _internal_csv(day, HERE / "positions" / "internal" / f"posicoes_{day:%Y%m%d}.csv")
    _de_para(HERE / "lookups" / "DE_PARA_Fundos_20260201.xlsx")
    (HERE / "workflow").mkdir(exist_ok=True)
    import pandas as pd

    pd.DataFrame({"cnpj": list(FUNDS), "fund_name": list(FUNDS.values()),
                  "net_assets": [182_345_678.9, 54_321_000.12, 98_765_432.1]}).to_parquet(
        HERE / "workflow" / "funds.parquet", index=False)
    print(f"samples written under {HERE}")


if __name__ == "__main__":
    main()
