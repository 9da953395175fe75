"""Back-office sample files: MAPS workbooks, portfolio PDFs, FIDC estoque CSVs and their mapping workbooks.

``python -m etl.samples.backoffice`` rewrites them under ``etl/samples/``; the functions that
return bytes also feed the test portal, so the portal serves what the steps read.
"""

from __future__ import annotations

import datetime as dt
import io
import random
from pathlib import Path

import xlsxwriter

HERE = Path(__file__).resolve().parent
DAYS = (dt.date(2026, 2, 13), dt.date(2026, 2, 18))  # either side of Carnival (16-17/02 are holidays)

# fund code (as MAPS names files) -> (name, CNPJ, folder name in the filing tree)
MAPS_FUNDS = {
    "AGROSAFRA": ("FIDC Agro Safra Ação", "11.222.333/0001-81", "FIDC Agro Safra"),
    "CREDSP": ("FIM Crédito Privado São Paulo", "12.ABC.345/01DE-35", "FIM Credito Privado SP"),
}

HEADER_BLOCK_ROWS = 22
SECTIONS = {
    "Renda Fixa": (["Ativo", "Emissor", "Vencimento", "Quantidade", "Preço Unitário", "Valor Financeiro", "% PL"], [
        ["LTN 01/01/2029", "Tesouro Nacional", dt.date(2029, 1, 1), 1500, 712.345678, None, None],
        ["NTN-B 15/05/2035", "Tesouro Nacional", dt.date(2035, 5, 15), 820, 4312.118201, None, None],
        ["CDB Banco Xpto 2026", "Banco Xpto S.A.", dt.date(2026, 12, 21), 300, 1043.5, None, None],
    ]),
    "Cotas de Fundos": (["Fundo", "CNPJ", "Quantidade", "Valor da Cota", "Valor Financeiro", "% PL"], [
        ["FI Referenciado DI", "34.028.316/0001-03", 10000, 1.108762, None, None],
    ]),
    "Caixa": (["Descrição", "Valor Financeiro", "% PL"], [
        ["Saldo em conta corrente", 1995.88, None],
        ["Tesouraria", "—", None],
    ]),
    "Valores a Receber": (["Descrição", "Data", "Valor Financeiro", "% PL"], [
        ["Juros a receber", None, 12840.55, None],
    ]),
    "Valores a Pagar": (["Descrição", "Data", "Valor Financeiro", "% PL"], [
        ["Taxa de administração", None, -8123.4, None],
        ["Taxa de custódia", None, -1250.0, None],
        ["Auditoria", None, "—", None],
    ]),
    "Rentabilidade (%)": (["Período", "Fundo", "CDI", "% CDI"], [
        ["No dia", 0.0512, 0.0551, 92.92],
        ["No mês", 0.6231, 0.6432, 96.87],
        ["No ano", 1.6110, 1.6601, 97.04],
    ]),
}
POSICAO_SECTIONS = ("Renda Fixa", "Cotas de Fundos", "Caixa", "Valores a Receber", "Valores a Pagar")


def _section_rows(section: str, fund: str, day: dt.date) -> tuple[list[str], list[list]]:
    header, rows = SECTIONS[section]
    scale = 1.0 + (sum(map(ord, fund)) % 7) / 10 + (day.day % 5) / 100
    out = []
    for row in rows:
        row = list(row)
        if section == "Renda Fixa":
            row[3] = int(row[3] * scale)
            row[5] = round(row[3] * row[4], 2)
        elif section == "Cotas de Fundos":
            row[2] = int(row[2] * scale)
            row[4] = round(row[2] * row[3], 2)
        elif section != "Rentabilidade (%)":
            position = header.index("Valor Financeiro")
            if isinstance(row[position], float):
                row[position] = round(row[position] * scale, 2)
            if "Data" in header:
                row[header.index("Data")] = day
        out.append(row)
    return header, out


def maps_workbook(fund: str, day: dt.date, kind: str = "Composicao") -> bytes:
    """A MAPS "Composição" or "Posição" workbook: a 22-row header block, then titled sections."""
    name, cnpj, _ = MAPS_FUNDS.get(fund, (fund, "00.000.000/0001-91", fund))
    sections = SECTIONS if kind == "Composicao" else POSICAO_SECTIONS
    tables = {s: _section_rows(s, fund, day) for s in sections}
    money_total = sum(r[h.index("Valor Financeiro")] for s, (h, rows) in tables.items() if "Valor Financeiro" in h
                      for r in rows if isinstance(r[h.index("Valor Financeiro")], float | int))
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    sheet = book.add_worksheet("Composição" if kind == "Composicao" else "Posição")
    bold = book.add_format({"bold": True})
    money = book.add_format({"num_format": "#,##0.00"})
    date_format = book.add_format({"num_format": "dd/mm/yyyy"})
    title = "Composição da Carteira" if kind == "Composicao" else "Posição da Carteira"
    block = [
        ["MAPS - Sistema de Controle de Carteiras"], [title], [],
        ["Fundo:", name], ["CNPJ:", cnpj], ["Data:", day], ["Administrador:", "Administradora Beta DTVM"],
        ["Gestor:", "Gestora Alfa Ltda."], [], ["Patrimônio Líquido (PL):", round(money_total, 2)],
        ["Cota:", round(1.2345678 * (1 + day.day / 1000), 8)], ["Quantidade de cotas:", 1_000_000.0],
    ]
    for r, row in enumerate(block):
        for c, value in enumerate(row):
            if isinstance(value, dt.date):
                sheet.write_datetime(r, c, dt.datetime.combine(value, dt.time()), date_format)
            elif isinstance(value, float):
                sheet.write_number(r, c, value, money)
            else:
                sheet.write(r, c, value, bold if c == 0 else None)
    r = HEADER_BLOCK_ROWS
    for section, (header, rows) in tables.items():
        sheet.write(r, 0, section, bold)
        sheet.write_row(r + 1, 0, header, bold)
        r += 2
        for row in rows:
            for c, value in enumerate(row):
                if isinstance(value, dt.date):
                    sheet.write_datetime(r, c, dt.datetime.combine(value, dt.time()), date_format)
                elif value is not None:
                    sheet.write(r, c, value)
            r += 1
        if section == "Renda Fixa":
            sheet.write_row(r, 0, ["Subtotal Títulos Públicos"])
            r += 1
        if section != "Rentabilidade (%)":
            position = header.index("Valor Financeiro")
            total = sum(row[position] for row in rows if isinstance(row[position], float | int))
            sheet.write(r, 0, "Total", bold)
            sheet.write_number(r, position, round(total, 2), money)
            r += 1
        r += 1
    book.close()
    return buffer.getvalue()


def carteira_pdf(carteira: str, cnpj: str, day: dt.date, *, start: dt.date | None = None) -> bytes:
    """A one-page daily portfolio PDF as AMPLIS/QORE print it (Data, Carteira, Período, CNPJ, a table)."""
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=842, height=595)
    start = start or day
    lines = [
        (40, 40, 14, "Carteira Diária"),
        (40, 62, 10, f"Data: {day:%d/%m/%Y}"),
        (40, 78, 10, f"Carteira: {carteira} - Fundo de Investimento"),
        (40, 94, 10, f"CNPJ: {cnpj}"),
        (40, 110, 10, f"Período {start:%d/%m/%Y} a {day:%d/%m/%Y}"),
    ]
    for x, y, size, text in lines:
        page.insert_text((x, y), text, fontsize=size)
    columns = [40, 260, 400, 560, 720]
    header = ["Ativo", "Quantidade", "Preço", "Valor (R$)"]
    rows = [["LTN 01/01/2029", "1.500", "712,345678", "1.068.518,52"],
            ["Cotas FI Referenciado DI", "10.000", "1,108762", "11.087,62"],
            ["Saldo em conta", "1", "1.995,88", "1.995,88"]]
    y = 140
    for row in [header] + rows:
        page.draw_line((columns[0], y - 12), (columns[-1], y - 12))
        for c, text in enumerate(row):
            page.insert_text((columns[c] + 4, y), text, fontsize=9)
        y += 18
    page.draw_line((columns[0], y - 12), (columns[-1], y - 12))
    for x in columns:
        page.draw_line((x, 128), (x, y - 12))
    data = doc.tobytes()
    doc.close()
    return data


ESTOQUE_COLUMNS = ["seu_numero", "cedente_documento", "cedente_nome", "sacado_documento", "sacado_nome",
                   "tipo_recebivel", "data_emissao", "vencimento", "valor_nominal", "valor_presente", "valor_pdd",
                   "faixa_pdd", "situacao"]
CEDENTES = [("11.222.333/0001-81", "Agro Safra Comércio Ltda."), ("34.028.316/0001-03", "Distribuidora Índice S.A.")]
SACADOS = [("529.982.247-25", "João da Silva"), ("12.ABC.345/01DE-35", "Cooperativa São Paulo"),
           ("168.995.350-09", "Maria Souza"), ("11.444.777/0001-61", "Mercado Central Ltda.")]


def _brl(value: float) -> str:
    text = f"{value:,.2f}"
    return text.replace(",", "_").replace(".", ",").replace("_", ".")


def estoque_rows(fund: str, day: dt.date, count: int = 40) -> list[list[str]]:
    """Receivables for ``fund`` on ``day``: the same stock shifts a little from one day to the next."""
    rng = random.Random(f"{fund}")
    rows = []
    for n in range(count + 6):
        seq = n + 1
        emission = dt.date(2025, 9, 1) + dt.timedelta(days=rng.randint(0, 120))
        due = emission + dt.timedelta(days=rng.choice([30, 60, 90, 120, 150, 180]))
        nominal = round(rng.uniform(1_000, 80_000), 2)
        band = rng.choice("AAAABBCDEFGH")
        rate = {"A": 0.005, "B": 0.01, "C": 0.03, "D": 0.1, "E": 0.3, "F": 0.5, "G": 0.7, "H": 1.0}[band]
        status = "A vencer" if due >= day else "Vencido"
        if n >= count - 3 + (1 if day == DAYS[1] else -2):
            continue  # a few receivables only exist on one of the two days (new / liquidated)
        if day == DAYS[1] and seq in (2, 3):
            continue  # liquidated before the 18th
        if day == DAYS[1] and seq == 5:
            band, rate, status = "WOP", 1.0, "Baixado (write-off)"
        present = round(nominal / (1 + 0.015) ** max((due - day).days / 30, 0), 2)
        cedente = CEDENTES[seq % len(CEDENTES)]
        sacado = SACADOS[seq % len(SACADOS)]
        if seq == 7:
            sacado = ("123.456.789-00", "CPF Inválido da Silva")  # planted: bad check digits
        rows.append([f"{fund[:4]}{seq:06d}", cedente[0], cedente[1], sacado[0], sacado[1],
                     rng.choice(["Duplicata", "CCB", "Cheque"]), f"{emission:%d/%m/%Y}", f"{due:%d/%m/%Y}",
                     _brl(nominal), _brl(present), _brl(round(present * rate, 2)), band, status])
    return rows


def estoque_csv(fund: str, day: dt.date) -> bytes:
    """An estoque export: ';', latin-1, decimal comma, dd/mm/yyyy."""
    lines = [";".join(ESTOQUE_COLUMNS)] + [";".join(row) for row in estoque_rows(fund, day)]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _mapping_workbooks(folder: Path) -> None:
    book = xlsxwriter.Workbook(folder / "MAPS_mapeamento.xlsx")
    bold = book.add_format({"bold": True})
    funds = book.add_worksheet("Fundos")
    funds.write_row(0, 0, ["Fundo MAPS", "Nome", "CNPJ", "Pasta"], bold)
    for r, (code, (name, cnpj, folder_name)) in enumerate(MAPS_FUNDS.items(), start=1):
        funds.write_row(r, 0, [code, name, cnpj, folder_name])
    tables = book.add_worksheet("Tabelas")
    tables.write_row(0, 0, ["Seção", "Tabela"], bold)
    for r, (section, table) in enumerate([("Renda Fixa", "TB_RENDA_FIXA"), ("Cotas de Fundos", "TB_COTAS_FUNDOS"),
                                          ("Caixa", "TB_CAIXA"), ("Valores a Receber", "TB_VALORES_RECEBER"),
                                          ("Valores a Pagar", "TB_VALORES_PAGAR"),
                                          ("Rentabilidade (%)", "TB_RENTABILIDADE")], start=1):
        tables.write_row(r, 0, [section, table])
    columns = book.add_worksheet("Colunas")
    columns.write_row(0, 0, ["Seção", "Coluna MAPS", "Coluna Banco", "Tipo"], bold)
    spec = {
        "Renda Fixa": [("Ativo", "ATIVO", "texto"), ("Emissor", "EMISSOR", "texto"),
                       ("Vencimento", "VENCIMENTO", "data"), ("Quantidade", "QUANTIDADE", "numero"),
                       ("Preço Unitário", "PRECO_UNITARIO", "numero"), ("Valor Financeiro", "VALOR", "dinheiro")],
        "Cotas de Fundos": [("Fundo", "FUNDO_INVESTIDO", "texto"), ("CNPJ", "CNPJ", "texto"),
                            ("Quantidade", "QUANTIDADE", "numero"), ("Valor da Cota", "VALOR_COTA", "numero"),
                            ("Valor Financeiro", "VALOR", "dinheiro")],
        "Caixa": [("Descrição", "DESCRICAO", "texto"), ("Valor Financeiro", "VALOR", "dinheiro")],
        "Valores a Receber": [("Descrição", "DESCRICAO", "texto"), ("Valor Financeiro", "VALOR", "dinheiro")],
        "Valores a Pagar": [("Descrição", "DESCRICAO", "texto"), ("Valor Financeiro", "VALOR", "dinheiro")],
        "Rentabilidade (%)": [("Período", "PERIODO", "texto"), ("Fundo", "RENT_FUNDO", "numero"),
                              ("CDI", "RENT_CDI", "numero"), ("% CDI", "PERC_CDI", "numero")],
    }
    r = 1
    for section, cols in spec.items():
        for source, target, kind in cols:
            columns.write_row(r, 0, [section, source, target, kind])
            r += 1
    book.close()

    book = xlsxwriter.Workbook(folder / "DE_PARA_Carteiras.xlsx")
    sheet = book.add_worksheet("DE PARA")
    sheet.write_row(0, 0, ["Carteira", "CNPJ", "Fundo"], book.add_format({"bold": True}))
    sheet.write_row(1, 0, ["AGRO SAFRA", "11.222.333/0001-81", "FIDC Agro Safra"])
    sheet.write_row(2, 0, ["CRED SP", "12.ABC.345/01DE-35", "FIM Credito Privado SP"])
    book.close()


def main() -> None:
    maps_dir, pdf_dir, fidc_dir, mapping_dir = (HERE / "maps", HERE / "pdfs", HERE / "fidc", HERE / "mappings")
    for folder in (maps_dir, pdf_dir, fidc_dir, mapping_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for day in DAYS:
        for fund in MAPS_FUNDS:
            for kind in ("Composicao", "Posicao"):
                (maps_dir / f"{kind}_{fund}_{day:%Y%m%d}.xlsx").write_bytes(maps_workbook(fund, day, kind))
        (fidc_dir / f"estoque_AGROSAFRA_{day:%Y%m%d}.csv").write_bytes(estoque_csv("AGROSAFRA", day))
    day = DAYS[1]
    (pdf_dir / "carteira_agro_20260218.pdf").write_bytes(carteira_pdf("AGRO SAFRA", "11.222.333/0001-81", day))
    (pdf_dir / "carteira_credsp_20260218.pdf").write_bytes(carteira_pdf("CRED SP", "12.ABC.345/01DE-35", day))
    (pdf_dir / "relatorio_desconhecido.pdf").write_bytes(carteira_pdf("FUNDO SEM CADASTRO", "34.028.316/0001-03", day))
    _mapping_workbooks(mapping_dir)
    print(f"back-office samples written under {HERE}")


if __name__ == "__main__":
    main()
