"""MAPS workbooks, ODBC loads (real unixODBC + SQLite ODBC driver), portfolio PDFs and FIDC stock."""

from __future__ import annotations

from decimal import Decimal

import decimal
import shutil
import sys
from pathlib import Path

import pytest
from python_calamine import CalamineWorkbook

from etl import odbc, registry, runtime
from etl.errors import EtlError
from etl.samples import backoffice as samples
from tests.server import Server
from tests.steps import run


def sqlite_odbc(path: Path) -> str:
    return f"DRIVER={{SQLite3}};Database={path}"


def query(conn_str: str, sql: str) -> list[tuple]:
    pyodbc = odbc.pyodbc_module()
    with pyodbc.connect(conn_str) as connection:
        return [tuple(row) for row in connection.execute(sql).fetchall()]


def test_maps_consolidate_reads_sections_totals_and_dashes(dirs: Path):
    (dirs / "inputs" / "maps" / "notas.xlsx").write_bytes(b"not a MAPS file name: skipped")
    result = run("maps_consolidate")
    assert result["files_read"] == 8 and result["funds"] == ["AGROSAFRA", "CREDSP"]
    # Renda Fixa: three assets per workbook (the Subtotal row is not one); Rentabilidade only in Composição
    assert result["sections"]["Renda Fixa"] == 24 and result["sections"]["Rentabilidade (%)"] == 12
    assert result["total_checks"] == [], "every section's Total row equals the sum of its rows"
    book = CalamineWorkbook.from_path(result["workbook"])
    assert {"Patrimônio", "Renda Fixa", "Valores a Pagar"} <= set(book.sheet_names)
    import pandas as pd

    pay = pd.read_parquet(Path(result["workbook"]).parent / "valores_a_pagar.parquet")
    audit = pay[(pay["Descrição"] == "Auditoria") & (pay["FUNDO"] == "CREDSP")]
    assert (audit["Valor Financeiro"] == 0.0).all() and len(audit) == 4  # "—" means zero
    net = pd.read_parquet(Path(result["workbook"]).parent / "patrimonio.parquet")
    assert net["PATRIMONIO_LIQUIDO"].gt(0).all() and set(net["TIPO"]) == {"Composicao", "Posicao"}


def test_maps_consolidate_reports_a_total_that_does_not_add_up(dirs: Path):
    import xlsxwriter

    path = dirs / "inputs" / "maps" / "Composicao_ERRADO_20260218.xlsx"
    book = xlsxwriter.Workbook(path)
    sheet = book.add_worksheet()
    sheet.write(0, 0, "Patrimônio Líquido")
    sheet.write(0, 1, 300.0)
    for r, row in enumerate([["Caixa"], ["Descrição", "Valor Financeiro"], ["Conta", 100.0], ["Outra", "—"],
                             ["Subtotal contas", 100.0], ["Total", 250.0]], start=22):
        sheet.write_row(r, 0, row)
    book.close()
    result = run("maps_consolidate", funds=["ERRADO"])
    assert result["total_checks"] == [{"file": path.name, "section": "Caixa", "total_row": 250.0, "sum_of_rows": 100.0}]


def test_maps_save_excel_folders_files_by_fund_year_month(dirs: Path):
    shutil.copy(dirs / "inputs" / "maps" / "Composicao_CREDSP_20260218.xlsx",
                dirs / "inputs" / "maps" / "Composicao_SEMPASTA_20260218.xlsx")
    result = run("maps_save_excel_folders", kind="Composicao")
    assert result["unmapped"] == ["Composicao_SEMPASTA_20260218.xlsx"]
    folder = dirs / "outputs" / "maps_arquivo" / "FIDC Agro Safra" / "2026" / "02"
    names = sorted(p.name for p in folder.iterdir())
    assert "18.02 - Composicao - Renda Fixa - AGROSAFRA.xlsx" in names and len(names) == 12  # 6 sections x 2 days
    rows = CalamineWorkbook.from_path(str(folder / names[0])).get_sheet_by_index(0).to_python()
    assert rows[0][0] in {"Ativo", "Descrição", "Fundo", "Período"} and len(rows) > 1


def test_maps_upload_replaces_each_date_and_fund_in_one_transaction(dirs: Path, monkeypatch: pytest.MonkeyPatch):
    first = run("maps_upload_access")  # the sample SQLite database through the real ODBC driver
    db = sqlite_odbc(dirs / "outputs" / "maps" / "maps_sample.db")
    assert first["committed"] and first["inserted"] == 52 and first["deleted"] == 0
    again = run("maps_upload_access")
    assert again["deleted"] == 52 and again["inserted"] == 52
    assert query(db, "SELECT COUNT(*) FROM TB_RENDA_FIXA") == [(12,)]
    # money is stored exactly: the TEXT column holds the decimal the workbook showed
    values = dict(query(db, "SELECT ATIVO, VALOR FROM TB_RENDA_FIXA WHERE FUNDO = 'AGROSAFRA' "
                            "AND DATA_INPUT = '2026-02-18'"))
    expected = round(int(1500 * (1 + sum(map(ord, "AGROSAFRA")) % 7 / 10 + 18 % 5 / 100)) * 712.345678, 2)
    assert decimal.Decimal(values["LTN 01/01/2029"]) == decimal.Decimal(repr(expected)).quantize(decimal.Decimal("0.01"))
    dry = run("maps_upload_access", date="2026-02-13", dry_run=True)
    assert dry["dry_run"] and not dry["committed"] and dry["deleted"] == dry["inserted"] == 26
    assert query(db, "SELECT COUNT(*) FROM TB_CAIXA") == [(8,)]


def test_a_failing_insert_rolls_back_the_whole_load(dirs: Path, monkeypatch: pytest.MonkeyPatch):
    path = dirs / "target.db"
    conn_str = sqlite_odbc(path)
    pyodbc = odbc.pyodbc_module()
    with pyodbc.connect(conn_str, autocommit=True) as connection:
        connection.execute("CREATE TABLE TB_RENDA_FIXA (DATA_INPUT DATE, FUNDO TEXT, ATIVO TEXT, EMISSOR TEXT, "
                           "VENCIMENTO DATE, QUANTIDADE TEXT, PRECO_UNITARIO TEXT, VALOR TEXT)")
        connection.execute("INSERT INTO TB_RENDA_FIXA (DATA_INPUT, FUNDO, ATIVO) VALUES ('2026-02-18', 'AGROSAFRA', 'old')")
        for table in ("TB_COTAS_FUNDOS", "TB_CAIXA", "TB_VALORES_RECEBER", "TB_RENTABILIDADE"):
            connection.execute(f"CREATE TABLE {table} (DATA_INPUT DATE, FUNDO TEXT, FUNDO_INVESTIDO TEXT, CNPJ TEXT, "
                               "QUANTIDADE TEXT, VALOR_COTA TEXT, DESCRICAO TEXT, VALOR TEXT, PERIODO TEXT, "
                               "RENT_FUNDO TEXT, RENT_CDI TEXT, PERC_CDI TEXT)")
        # the second row of this table breaks a rule of the database
        connection.execute("CREATE TABLE TB_VALORES_PAGAR (DATA_INPUT DATE, FUNDO TEXT, DESCRICAO TEXT, "
                           "VALOR TEXT CHECK (DESCRICAO <> 'Taxa de custódia'))")
    monkeypatch.setenv("ETL_SECRET_ODBC_TARGET", conn_str)
    with pytest.raises(EtlError, match=r"insert into TB_VALORES_PAGAR failed at row 2: .*rolled back"):
        run("maps_upload_access", database="target", date="2026-02-18", funds=["AGROSAFRA"])
    assert query(conn_str, "SELECT ATIVO FROM TB_RENDA_FIXA") == [("old",)], "the delete and inserts were undone"
    assert query(conn_str, "SELECT COUNT(*) FROM TB_CAIXA") == [(0,)]
    with pytest.raises(EtlError, match="no connection string for database 'missing'"):
        run("maps_upload_access", database="missing")


def test_odbc_names_and_drivers_fail_clearly(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(EtlError, match="not a plain table or column name"):
        odbc.quote("x]; DROP TABLE y; --", "brackets")
    with pytest.raises(EtlError, match="cannot connect"):
        odbc.load("DRIVER={No Such Driver};PWD=hunter2", [])
    monkeypatch.setitem(sys.modules, "pyodbc", None)  # as when libodbc.so.2 is missing
    with pytest.raises(EtlError, match="apt-get install unixodbc"):
        odbc.pyodbc_module()
    assert odbc.money(1995.875) == decimal.Decimal("1995.88") and odbc.money(0.1 + 0.2) == decimal.Decimal("0.30")


def test_save_pdfs_files_known_portfolios_and_reports_the_rest(dirs: Path):
    import pymupdf

    with pymupdf.open() as doc:
        doc.new_page().insert_text((40, 40), "Extrato sem dados de carteira")
        doc.save(dirs / "inputs" / "pdfs" / "extrato.pdf")
    result = run("save_pdfs")
    saved = {f["file"]: Path(f["saved_as"]) for f in result["filed"]}
    assert saved["carteira_agro_20260218.pdf"] == (dirs / "outputs" / "fundos" / "FIDC Agro Safra" / "06. Carteiras" /
                                                   "2026" / "02 - Fevereiro" / "18.02 - Carteira Diária - AGRO SAFRA.pdf")
    assert saved["carteira_agro_20260218.pdf"].read_bytes().startswith(b"%PDF")
    reasons = {u["file"]: u["reason"] for u in result["unclassified"]}
    assert set(reasons) == {"extrato.pdf", "relatorio_desconhecido.pdf"}
    assert "no 'Data:'" in reasons["extrato.pdf"] and "not in the DE PARA" in reasons["relatorio_desconhecido.pdf"]
    assert (dirs / "inputs" / "pdfs" / "carteira_agro_20260218.pdf").exists(), "copied unless move is asked"


def test_fidc_estoque_validates_ages_totals_and_compares_days(dirs: Path):
    result = run("fidc_estoque")
    assert result["date"] == "2026-02-18" and result["previous_date"] == "2026-02-13"
    assert result["invalid_documents"] == [{"seu_numero": "AGRO000007", "coluna": "sacado_documento",
                                            "documento": "123.456.789-00"}]
    assert result["movement"] == {"novo": 3, "liquidado": 2, "baixado": 1}
    rows = samples.estoque_rows("AGROSAFRA", samples.DAYS[1])
    assert result["receivables"] == len(rows)
    total_pv = sum(Decimal(r[9].replace(".", "").replace(",", ".")) for r in rows)
    assert Decimal(result["valor_presente"]) == total_pv  # exact, as text in the result
    assert result["histogram_data"]["labels"][-1] == "WOP"
    sheets = CalamineWorkbook.from_path(result["report"]).sheet_names
    assert sheets[:3] == ["Resumo", "Por cedente", "Por sacado"] and "Movimentação" in sheets
    first = run("fidc_estoque", date="2026-02-13")
    assert first["previous_date"] is None and first["movement"] == {"novo": 0, "liquidado": 0, "baixado": 0}
    with pytest.raises(EtlError, match="no estoque file for AGROSAFRA on 2026-02-14"):
        run("fidc_estoque", date="2026-02-14")


def test_every_file_step_completes_with_an_empty_body_through_the_service(server: Server):
    for name in ("maps_consolidate", "maps_save_excel_folders", "maps_upload_access", "save_pdfs", "fidc_estoque"):
        task = server.run(name)
        final = server.wait_for(task["task_id"], timeout=120)
        assert final["status"] == "completed", (name, final)


def test_runtime_stop_is_honoured_between_maps_files(dirs: Path):
    context = runtime.TaskContext(task_id="s", input_dir=dirs / "inputs", output_dir=dirs / "outputs",
                                  work_root=dirs / "runs", work_dir=dirs / "runs" / "tasks" / "s")
    context.request_stop("test")
    step = registry.get_step("maps_consolidate", False)
    with runtime.bind(context), pytest.raises(EtlError, match="stop"):
        step.run(step.params_model.model_validate({}))


def test_datasets_read_pdf_tables_and_odbc_queries(dirs: Path, monkeypatch: pytest.MonkeyPatch):
    from etl.datasets import ReadOptions, read_table

    pdf = read_table(dirs / "inputs" / "pdfs" / "carteira_agro_20260218.pdf")
    assert list(pdf.columns) == ["Ativo", "Quantidade", "Preço", "Valor (R$)"]
    # cells come from the page's words: "1,108762" stays one number (Table.extract() splits it)
    assert pdf.iloc[1].tolist() == ["Cotas FI Referenciado DI", "10.000", "1,108762", "11.087,62"]
    path = dirs / "positions.db"
    pyodbc = odbc.pyodbc_module()
    with pyodbc.connect(sqlite_odbc(path), autocommit=True) as connection:
        connection.execute("CREATE TABLE pos (fundo TEXT, ativo TEXT, valor TEXT)")
        connection.execute("INSERT INTO pos VALUES ('AGROSAFRA', 'LTN', '1068518.52'), ('CREDSP', 'CDB', '10,5')")
    monkeypatch.setenv("ETL_SECRET_ODBC_POSITIONS", sqlite_odbc(path))
    query_file = dirs / "inputs" / "positions.sql"
    query_file.write_text("SELECT fundo, ativo, valor FROM pos ORDER BY fundo", encoding="utf-8")
    frame = read_table(query_file, options=ReadOptions(database="positions"))
    assert frame.values.tolist() == [["AGROSAFRA", "LTN", "1068518.52"], ["CREDSP", "CDB", "10,5"]]
    with pytest.raises(EtlError, match="needs read.database"):
        read_table(query_file)
