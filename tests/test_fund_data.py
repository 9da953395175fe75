"""Fund data a back office can sign: exact money through the HTTP API and the CLI, identifiers kept as
text, CNAB-444 remittances read and reconciled against their CSV, and no float noise in any output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from etl.samples.funds import remittance, write_cnab444, write_informe, write_stock_csv
from tests.server import ROOT, Server
from tests.steps import SAMPLES

RUN_DATE = "20260218"
# Binary noise as a float prints it: 10954.759999999998, 0.30000000000000004, 85000.5000000001.
NOISE = re.compile(r"\d[.,]\d*(0{6,}[1-9]|9{6,}\d)")

CONTROL = {
    "control": "cnab_remessa",
    "description": "FIDC remittance (CNAB-444) against the originator's CSV",
    "default_run_date": "18/02/2026",
    "source": {"name": "CNAB", "path": "cnab/remessa_{yyyymmdd}.rem", "format": "cnab444",
               "harmonisation": {"types": {"seu_numero": "text", "valor_face": "number", "valor_presente": "number",
                                           "vencimento": "date", "cep_sacado": "text"},
                                 "keep": ["seu_numero", "vencimento", "valor_face", "valor_presente", "cep_sacado"]}},
    "target": {"name": "CSV", "path": "cnab/remessa_{yyyymmdd}.csv",
               "harmonisation": {"rename": {"cep": "cep_sacado"},
                                 "types": {"seu_numero": "text", "valor_face": "money", "valor_presente": "money",
                                           "vencimento": "date", "cep_sacado": "text"}}},
    "keys": ["seu_numero"],
    "compare": [{"column": "valor_face"}, {"column": "valor_presente", "abs_tolerance": 0.01}],
    "rules": [{"name": "cents", "when": "abs(diff_valor_presente) < 1", "category": "Rounding"}],
}


def _inputs(folder: Path) -> dict[str, Any]:
    """A private input folder: the samples, a 64-record remittance, its CSV with three breaks, a broken copy."""
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    rows = remittance(64)
    write_cnab444(folder / "cnab" / f"remessa_{RUN_DATE}.rem", rows)
    write_cnab444(folder / "cnab" / "remessa_trailer_errado.rem", rows, trailer_count=65)
    # 0.01 off is exactly the tolerance (agreed); 0.50 off is a break; one title missing from the CSV.
    changed = {rows[3]["seu_numero"]: rows[3]["valor_presente"] + Decimal("0.01"),
               rows[7]["seu_numero"]: rows[7]["valor_presente"] - Decimal("0.50")}
    write_stock_csv(folder / "cnab" / f"remessa_{RUN_DATE}.csv", rows, changed=changed,
                    missing={rows[10]["seu_numero"]})
    write_informe(folder / "fundosnet" / "informe_mensal_012026.xml")
    (folder / "controls" / "cnab_control.json").write_text(json.dumps(CONTROL), encoding="utf-8")
    return {"rows": rows, "face": sum(r["valor_face"] for r in rows), "present": sum(r["valor_presente"] for r in rows)}


@pytest.fixture(scope="module")
def fund_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("funds")
    expected = _inputs(root / "inputs")
    server = Server(root / "task_storage", workers=2, input_dir=root / "inputs", output_dir=root / "outputs",
                    work_dir=root / "runs").start()
    yield server, root, expected
    server.stop()


def _completed(server: Server, step: str, parameters: dict | None = None, previous: dict | None = None) -> dict:
    body: dict[str, Any] = {"parameters": parameters or {}}
    if previous is not None:
        body["previous_outputs"] = previous
    response = server.client.post(f"/run/{step}", json=body)
    assert response.status_code == 202, response.text
    final = server.wait_for(response.json()["task_id"], timeout=120)
    assert final["status"] == "completed", (step, final["error"], final["log_tail"])
    return final["output"]


def _no_noise(text: str, where: str) -> None:
    found = NOISE.search(text)
    assert found is None, f"float noise {found.group(0)!r} in {where}"


def _scan_outputs(paths: list[str]) -> None:
    """Every CSV, xlsx (its sheet XML) and JSON file: no float noise anywhere."""
    assert paths
    for name in paths:
        path = Path(name)
        if path.suffix == ".xlsx":
            with zipfile.ZipFile(path) as book:
                for member in book.namelist():
                    if member.startswith("xl/worksheets/") or member == "xl/sharedStrings.xml":
                        _no_noise(book.read(member).decode("utf-8"), f"{path.name}:{member}")
        elif path.suffix in (".csv", ".json"):
            _no_noise(path.read_text(encoding="utf-8-sig"), path.name)


def test_cnab444_totals_are_exact_through_the_api_and_chain_into_a_grand_total(fund_server):
    server, _, expected = fund_server
    read = _completed(server, "read_cnab", {"path": f"cnab/remessa_{RUN_DATE}.rem"})
    assert read["row_count"] == 64 and read["record_counts"] == {"header": 1, "detail": 64, "trailer": 1}
    assert Decimal(read["totals"]["valor_face"]) == expected["face"]
    assert Decimal(read["totals"]["valor_presente"]) == expected["present"]
    assert read["types"]["valor_face"] == "decimal(2)" and read["types"]["vencimento"] == "date"
    first = dict(zip(read["calculation_results"]["headers"], read["calculation_results"]["table"][0]))
    assert first["documento_cedente"] == "07710496000136" and first["cep_sacado"] == "02013003"
    assert first["valor_face"] == str(expected["rows"][0]["valor_face"])  # money is text in JSON
    assert first["vencimento"] == "2026-03-02"
    assert read["records"]["header"][0]["data_gravacao"] == "2026-02-18"

    total = _completed(server, "aggregate", {"by": [], "metrics": {"valor_face": "sum", "valor_presente": ["sum",
                                                                                                        "count"]}},
                       previous={"dataset": read["dataset"]})
    row = dict(zip(total["calculation_results"]["headers"], total["calculation_results"]["table"][0]))
    assert Decimal(row["valor_face_sum"]) == expected["face"] and row["valor_presente_count"] == 64
    assert Decimal(row["valor_presente_sum"]) == expected["present"]

    out = _completed(server, "output", {"format": "csv", "name": "remessa_total"}, previous={"dataset": total["dataset"]})
    text = Path(out["file"]).read_text(encoding="utf-8-sig")
    assert f"{expected['face']}".replace(".", ",") in text


def test_a_broken_trailer_count_fails_with_the_line_number(fund_server):
    server, root, _ = fund_server
    response = server.client.post("/run/read_cnab", json={"parameters": {"path": "cnab/remessa_trailer_errado.rem"}})
    final = server.wait_for(response.json()["task_id"], timeout=60)
    assert final["status"] == "failed"
    assert "line 66 (trailer)" in final["error"]["message"] and "counts '000065'" in final["error"]["message"]
    assert "the file has 66" in final["error"]["message"]


def test_the_control_reconciles_the_remittance_against_its_csv_with_exact_tolerance(fund_server):
    server, root, expected = fund_server
    params = {"inputConfigFilePattern": "cnab_control.json"}
    chain = _completed(server, "completeness_control_comp", params)
    assert chain["break_count"] == 2  # 0.50 off and the missing title; 0.01 off is exactly within tolerance
    assert chain["histogram_data"]["new"] == 2
    totals = {row["Measure"]: row for row in chain["control_totals"]}
    assert Decimal(totals["valor_face: total before filters"]["CNAB"]) == expected["face"]
    missing = expected["rows"][10]
    assert Decimal(totals["valor_presente: total after filters"]["CSV"]) == (
        expected["present"] - missing["valor_presente"] + Decimal("0.01") - Decimal("0.50"))
    agreed, broken = (Decimal(totals[f"valor_presente: total {k}"]["CNAB"]) for k in ("agreed", "in breaks"))
    assert agreed + broken == expected["present"]
    assert totals["Rows in breaks"] == {"Measure": "Rows in breaks", "CNAB": 2, "CSV": 1}
    assert totals["File read"]["CNAB"] == f"remessa_{RUN_DATE}.rem"
    _scan_outputs([f for f in chain["files"] if not f.endswith(".parquet")])
    _no_noise(json.dumps(chain), "the chain's JSON result")
    results_csv = next(f for f in chain["files"] if f.endswith("_results.csv"))
    lines = Path(results_csv).read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].replace('"', "").split(";")
    money_at = header.index("valor_face_src")
    values = [line.replace('"', "").split(";")[money_at] for line in lines[1:]]
    assert all(re.fullmatch(r"-?\d+,\d{2}", v) for v in values if v), values[:5]
    report = next(f for f in chain["files"] if f.endswith(".xlsx"))
    from python_calamine import CalamineWorkbook

    summary = CalamineWorkbook.from_path(report).get_sheet_by_name("Summary").to_python()
    labels = [row[0] for row in summary]
    assert "Control totals (tie these to the files)" in labels and "Breaks per category (chart data)" in labels
    with zipfile.ZipFile(report) as book:
        assert any(name.startswith("xl/charts/chart") for name in book.namelist())
        assert "#,##0.00" in book.read("xl/styles.xml").decode()


def test_workflow_chain_keeps_identifiers_and_money_exact_without_noise(fund_server):
    server, root, expected = fund_server
    csv = root / "inputs" / "cadastro.csv"
    csv.write_bytes("cnpj;cep;codigo;data_ref;valor;taxa\r\n"
                    "07710496000136;02013003;000123;180226;10.000,10;1,5000\r\n"
                    "11222333000181;01310100;004560;190226;954,66;2,2500\r\n"
                    "12345678000190;04538132;000789;200226;0,00;0,7500\r\n".encode("latin-1"))
    read = _completed(server, "read_csv", {"path": "cadastro.csv", "types": {"data_ref": "date:ddmmyy",
                                                                             "cnpj": "cnpj"}})
    table = read["calculation_results"]["table"]
    headers = read["calculation_results"]["headers"]
    column = {name: [row[headers.index(name)] for row in table] for name in headers}
    assert column["cnpj"] == ["07710496000136", "11222333000181", "12345678000190"]
    assert column["cep"] == ["02013003", "01310100", "04538132"] and column["codigo"] == ["000123", "004560", "000789"]
    assert column["data_ref"] == ["2026-02-18", "2026-02-19", "2026-02-20"]
    assert read["invalid_documents"] == [{"column": "cnpj", "row": 4, "value": "12345678000190"}]
    assert Decimal(read["totals"]["valor"]) == Decimal("10954.76")
    derived = _completed(server, "derive", {"columns": {"juros": "valor * taxa / 100"}},
                         previous={"dataset": read["dataset"]})
    assert Decimal(derived["totals"]["juros"]) == Decimal("150.001500") + Decimal("21.47985")
    weighted = _completed(server, "aggregate", {"by": [], "metrics": {"valor": "sum", "taxa": "weighted_mean"},
                                                "weights": {"taxa": "valor"}}, previous={"dataset": derived["dataset"]})
    row = dict(zip(weighted["calculation_results"]["headers"], weighted["calculation_results"]["table"][0]))
    assert Decimal(row["valor_sum"]) == Decimal("10954.76")
    assert Decimal(row["taxa_weighted_mean"]).quantize(Decimal("0.0001")) == Decimal("1.5654")
    files = []
    for fmt in ("csv", "xlsx"):
        files.append(_completed(server, "output", {"format": fmt, "name": f"cadastro_{fmt}"},
                                previous={"dataset": derived["dataset"]})["file"])
    _scan_outputs(files)
    text = Path(files[0]).read_text(encoding="utf-8-sig")
    assert '"10000,10"' in text and '"0,00"' in text and "07710496000136" in text and "02013003" in text
    dotted = _completed(server, "output", {"format": "csv", "name": "cadastro_ponto", "decimal": ".", "thousands": ","},
                        previous={"dataset": read["dataset"]})
    assert '"10,000.10"' in Path(dotted["file"]).read_text(encoding="utf-8-sig")
    for result in (read, derived, weighted):
        _no_noise(json.dumps(result), "a workflow result")


def test_decimal_point_option_is_honoured(fund_server):
    server, root, _ = fund_server
    (root / "inputs" / "ponto.csv").write_bytes(b"item;valor\r\nA;1.500\r\nB;2,000.25\r\n")
    read = _completed(server, "read_csv", {"path": "ponto.csv", "read": {"decimal": "."}})
    assert Decimal(read["totals"]["valor"]) == Decimal("2001.75")  # 1.5 + 2000.25, never 1500
    default = _completed(server, "read_csv", {"path": "ponto.csv", "types": {"valor": "money"}})
    assert default["warnings"] and "not numbers" in default["warnings"][0]


def test_workbook_sheets_stack_and_a_wrong_sheet_lists_the_sheets(fund_server):
    import xlsxwriter

    server, root, _ = fund_server
    path = root / "inputs" / "carteiras.xlsx"
    book = xlsxwriter.Workbook(path)
    for name, values in (("FIDC A", [1000.10, 2500.255]), ("FIDC B", [0.1, 0.2])):
        sheet = book.add_worksheet(name)
        sheet.write_row(0, 0, ["ativo", "valor"])
        for row, value in enumerate(values, start=1):
            sheet.write_row(row, 0, [f"{name}-{row}", value])
        sheet.write_row(len(values) + 1, 0, ["% do PL", "12,5%"])
    book.close()
    read = _completed(server, "read_excel", {"path": "carteiras.xlsx", "read": {"sheet": "*"},
                                             "types": {"valor": "number"}})
    assert read["row_count"] == 6 and read["columns"][0] == "sheet"
    assert Decimal(read["totals"]["valor"]) == Decimal("3500.655")  # 0.1 + 0.2 is exactly 0.3 here
    assert any("12,5%" in w for w in read["warnings"])
    response = server.client.post("/run/read_excel", json={"parameters": {"path": "carteiras.xlsx",
                                                                          "read": {"sheet": "Plan1"}}})
    failed = server.wait_for(response.json()["task_id"], timeout=60)
    assert failed["status"] == "failed" and "FIDC A, FIDC B" in failed["error"]["message"]


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI with the server's folders, as an analyst at the same machine would run it."""
    env = {"PATH": "/usr/bin:/bin", "ETL_INPUT_DIR": str(root / "inputs"), "ETL_OUTPUT_DIR": str(root / "outputs"),
           "ETL_WORK_DIR": str(root / "runs")}
    return subprocess.run([sys.executable, "-m", "etl", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_cli_reads_the_remittance_exactly_and_names_the_broken_line(fund_server):
    _, root, expected = fund_server
    done = _cli(root, "read_cnab", "--path", f"cnab/remessa_{RUN_DATE}.rem")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert Decimal(result["totals"]["valor_face"]) == expected["face"]
    assert Decimal(result["totals"]["valor_presente"]) == expected["present"]
    broken = _cli(root, "read_cnab", "--path", "cnab/remessa_trailer_errado.rem")
    assert broken.returncode == 1 and "line 66 (trailer)" in broken.stderr
    total = _cli(root, "aggregate", "--dataset", result["dataset"], "--by", "[]", "--metrics", '{"valor_face": "sum"}')
    assert total.returncode == 0, total.stderr
    assert json.loads(total.stdout)["totals"] == {"valor_face_sum": str(expected["face"])}
    helped = _cli(root, "read_csv", "--help")
    assert helped.returncode == 0 and "--read.decimal" in helped.stdout and 'default ","' in helped.stdout


def test_business_days_know_consciencia_negra_and_take_brazilian_dates(fund_server):
    server, _, _ = fund_server
    day = _completed(server, "business_days", {"date": "20/11/2024"})
    assert day["is_business_day"] is False and day["next_business_day"] == "2024-11-21"
    assert "991 dates" in day["calendar"]
    week = _completed(server, "business_days", {"date": "18/11/2024", "end": "22/11/2024"})
    assert week["count"] == 4 and week["du"] == 3 and "after date up to and including end" in week["conventions"]["du"]


def test_fundosnet_informe_reads_into_named_tables_with_exact_decimal_commas(fund_server):
    server, root, _ = fund_server
    report = _completed(server, "read_xml_report", {"path": "fundosnet/informe_mensal_012026.xml",
                                                    "table": "inadimplencia"})
    tables = report["tables"]
    assert {"cabecalho", "patrimonio", "ativo", "passivo", "inadimplencia", "classes_cota",
            "LISTA_INFORM/ATIVO/CARTEIRA"} <= set(tables)
    assert Decimal(tables["patrimonio"]["totals"]["VL_PATRIM_LIQ"]) == Decimal("125430221.37")
    assert Decimal(tables["passivo"]["totals"]["VL_PASSIVO"]) == Decimal("1569778.93")
    assert report["row_count"] == 4 and Decimal(report["totals"]["VL_VENC"]) == Decimal("232340.42")
    classes = tables["classes_cota"]
    assert classes["row_count"] == 3 and classes["types"]["VL_COTA"] == "decimal(8)"
    assert Decimal(classes["totals"]["QT_COTAS"]) == Decimal("95000")
    header = dict(zip(tables["cabecalho"]["calculation_results"]["headers"],
                      tables["cabecalho"]["calculation_results"]["table"][0]))
    assert header["NR_CNPJ_FUNDO"] == "07710496000136" and header["DT_COMPT"] == "01/2026"
    carteira = tables["LISTA_INFORM/ATIVO/CARTEIRA"]["totals"]
    assert Decimal(carteira["VL_DIR_CRED_SEM_AQUIS"]) + Decimal(carteira["VL_DIR_CRED_COM_AQUIS"]) + Decimal(
        tables["ativo"]["totals"]["VL_DISPONIB"]) == Decimal(tables["ativo"]["totals"]["VL_SOM_APLIC_ATIVO"])
    _no_noise(json.dumps(report), "the informe's result")
    total = _cli(root, "aggregate", "--dataset", report["dataset"], "--by", "[]", "--metrics", '{"VL_VENC": "sum"}')
    assert total.returncode == 0, total.stderr
    assert json.loads(total.stdout)["totals"] == {"VL_VENC_sum": "232340.42"}


def test_a_tab_utf8_report_is_sniffed_and_a_wrong_read_says_so(fund_server):
    server, root, _ = fund_server
    report = "DIREITOS CREDITÓRIOS\tcedente_cnpj\tvalor_aquisicao\tvalor_presente\r\n" + "".join(
        f"Duplicata {n}\t07710496000136\t{n}.000,{n:02d}\t{n - 1}.999,99\r\n" for n in range(1, 13))
    (root / "inputs" / "ted_relatorio.txt").write_bytes(report.encode("utf-8"))
    read = _completed(server, "read_csv", {"path": "ted_relatorio.txt"})
    assert read["read"] == {"encoding": "utf-8", "separator": "\t", "sniffed": ["encoding", "separator"]}
    assert read["columns"][0] == "DIREITOS CREDITÓRIOS" and read["row_count"] == 12 and read["warnings"] == []
    assert Decimal(read["totals"]["valor_aquisicao"]) == sum(Decimal(f"{n}000.{n:02d}") for n in range(1, 13))
    assert Decimal(read["totals"]["valor_presente"]) == sum(Decimal(f"{n - 1}999.99") for n in range(1, 13))
    forced = _completed(server, "read_csv", {"path": "ted_relatorio.txt", "read": {"separator": ";"}})
    assert forced["columns"] == ["DIREITOS CREDITÓRIOS\tcedente_cnpj\tvalor_aquisicao\tvalor_presente"]
    assert any("split by TAB" in w for w in forced["warnings"])
    (root / "inputs" / "sem_cabecalho.csv").write_bytes(b"07710496000136;18/02/2026;1.500,00\r\n"
                                                        b"11222333000181;18/02/2026;2.000,10\r\n")
    headless = _completed(server, "read_csv", {"path": "sem_cabecalho.csv"})
    assert any("header row looks like data" in w for w in headless["warnings"])
    response = server.client.post("/run/read_csv", json={"parameters": {"path": "fundosnet/informe_mensal_012026.xml"}})
    failed = server.wait_for(response.json()["task_id"], timeout=60)
    assert failed["status"] == "failed" and "is XML, not a CSV file" in failed["error"]["message"]


def test_a_glob_stacks_files_with_source_file_and_stack_unions_datasets(fund_server):
    server, root, expected = fund_server
    rows = expected["rows"]
    write_stock_csv(root / "inputs" / "estoques" / "parte_1.csv", rows[:30])
    write_stock_csv(root / "inputs" / "estoques" / "parte_2.csv", rows[30:])
    read = _completed(server, "read_csv", {"path": "estoques/parte_*.csv"})
    assert read["row_count"] == 64 and read["columns"][0] == "source_file"
    assert Decimal(read["totals"]["valor_face"]) == expected["face"]
    cnab = _completed(server, "read_cnab", {"path": f"cnab/remessa_{RUN_DATE}.rem"})
    both = _completed(server, "stack", {"datasets": [cnab["dataset"]]}, previous={"dataset": read["dataset"]})
    assert both["row_count"] == 128 and both["stacked"] == [64, 64]
    assert Decimal(both["totals"]["valor_presente"]) == 2 * expected["present"]
    response = server.client.post("/run/read_csv", json={"parameters": {"path": "estoques/nada_*.csv"}})
    failed = server.wait_for(response.json()["task_id"], timeout=60)
    assert "estoques holds: parte_1.csv, parte_2.csv" in failed["error"]["message"]


def _fixed(width: int, fields: dict[tuple[int, int], str]) -> str:
    line = [" "] * width
    for (start, end), value in fields.items():
        line[start - 1:end] = list(value.rjust(end - start + 1, "0") if value.isdigit() else
                                   value.ljust(end - start + 1))
    return "".join(line)


def test_cnab240_pairs_segments_and_a_layout_file_overrides_a_position(dirs):
    from tests.steps import run

    def record(kind: str, extra: dict) -> str:
        return _fixed(240, {(1, 3): "341", (8, 8): kind, **extra})

    lines = [record("0", {(4, 7): "0000", (144, 151): "18022026"}), record("1", {(4, 7): "0001"})]
    for n, (value, payer) in enumerate((("150000", "07710496000136"), ("8550", "11222333000181")), start=1):
        lines.append(record("3", {(4, 7): "0001", (9, 13): str(2 * n - 1), (14, 14): "P", (63, 77): f"DOC{n}",
                                  (78, 85): "20032026", (86, 100): value}))
        lines.append(record("3", {(4, 7): "0001", (9, 13): str(2 * n), (14, 14): "Q", (19, 33): payer,
                                  (34, 73): f"Pagador {n}", (129, 136): "02013003"}))
    lines.append(record("5", {(4, 7): "0001", (18, 23): "6"}))
    lines.append(record("9", {(4, 7): "9999", (18, 23): "1", (24, 29): "8"}))
    (dirs / "inputs" / "cobranca.rem").write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    result = run("read_cnab", path="cobranca.rem", layout="cnab240")
    assert result["row_count"] == 2 and result["totals"]["valor_titulo"] == "1585.50"
    first = dict(zip(result["calculation_results"]["headers"], result["calculation_results"]["table"][0], strict=True))
    assert first["documento_pagador"] == "007710496000136" and first["cep_pagador"] == "02013003"
    assert first["linha"] == 3 and first["vencimento"] == "2026-03-20"
    layouts = {"cnab240": {**json.loads((ROOT / "etl" / "data" / "cnab_layouts.json").read_text())["cnab240"]}}
    layouts["cnab240"]["records"]["3"]["segments"]["P"].append({"name": "valor_em_reais", "from": 86, "to": 100,
                                                               "type": "integer"})
    (dirs / "inputs" / "meu_layout.json").write_text(json.dumps(layouts), encoding="utf-8")
    custom = run("read_cnab", path="cobranca.rem", layout="cnab240", layout_file="meu_layout.json")
    assert custom["totals"]["valor_titulo"] == "1585.50" and "valor_em_reais" in custom["columns"]
    lines[-1] = record("9", {(4, 7): "9999", (18, 23): "1", (24, 29): "7"})
    (dirs / "inputs" / "cobranca.rem").write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    from etl.cnab import CnabError

    with pytest.raises(CnabError, match="line 8 \\(file_trailer\\): it counts '000007' records but the file has 8"):
        run("read_cnab", path="cobranca.rem", layout="cnab240")


def test_derived_money_keeps_exact_values_in_min_max_and_division(dirs):
    from tests.steps import run

    (dirs / "inputs" / "limites.csv").write_bytes(b"titulo;valor;limite\r\nA;10.000,10;5.000,00\r\n"
                                                  b"B;954,66;1.000,00\r\nC;-3,00;0,00\r\n")
    read = run("read_csv", path="limites.csv")
    derived = run("derive", dataset=read["dataset"], columns={"usado": "min(valor, limite)", "piso": "max(valor, 0)",
                                                              "terco": "valor / 3"})
    table = {row[0]: dict(zip(derived["columns"], row, strict=True)) for row in derived["calculation_results"]["table"]}
    assert [table[t]["usado"] for t in "ABC"] == ["5000.00", "954.66", "-3.00"]
    assert [table[t]["piso"] for t in "ABC"] == ["10000.10", "954.66", "0.00"]
    assert table["A"]["terco"] == "3333.366666666667"  # rounded half-even at 12 places, never a float
    assert derived["totals"]["usado"] == "5951.66"
