"""Completeness control and workflow steps, run in-process on the bundled samples and on real files."""

from __future__ import annotations

from decimal import Decimal
import datetime as dt
import json

import pandas as pd
import pytest
from pydantic import ValidationError
from python_calamine import CalamineWorkbook

from etl import brazil, registry
from etl.calendar import add_business_days, business_days_between, is_business_day, previous_business_day
from etl.comp.config import ConfigError
from etl.comp.stages import DataError
from etl.datasets import DatasetError, ReadOptions, read_raw, replacing, resolve
from etl.expr import Expression, ExpressionError, mask
from tests.steps import run


def test_the_chain_makes_the_report_and_ages_breaks_across_carnival(dirs):
    first = run("completeness_control_comp", expectedRunDate="13/02/2026")
    assert first["histogram_data"] == {"new": 3, "persisting": 0, "resolved": 0}
    second = run("completeness_control_comp")  # the sample config's default run date: 18/02/2026
    assert second["previous_business_day"] == "2026-02-13"  # 16 and 17/02 are Carnival
    assert second["histogram_data"] == {"new": 3, "persisting": 2, "resolved": 1}
    aged = {row[1]: row for row in second["calculation_results"]["table"]}
    assert aged["ITUB4"][3:] == ["2026-02-13", 1, "persisting"]
    assert aged["COMPROM0218"][2] == "Timing"
    assert aged["COTAS-DI-REF"][2] == "Pricing"
    assert aged["DEB-VALE29"][2] == "Unexplained"
    assert second["resolved"] == ["11222333000181|CDBBCOXPTO26"]

    stages = second["stages"]
    assert stages["combine_data_comp"]["histogram_data"] == {"matched": 10, "src_only": 2, "tgt_only": 1}
    report = next(f for f in second["files"] if f.endswith(".xlsx"))
    book = CalamineWorkbook.from_path(report)
    assert book.sheet_names == ["Summary", "Breaks", "Unexplained", "Matched sample"]
    breaks = book.get_sheet_by_name("Breaks").to_python()
    assert len(breaks) == 6 and "category" in breaks[0]
    summary = dict((row[0], row[1]) for row in book.get_sheet_by_name("Summary").to_python() if row and row[0])
    assert summary["Breaks"] == 5 and summary["Within tolerance"] == 1
    history = pd.read_parquet(dirs / "outputs" / "positions_daily" / "break_history.parquet")
    assert set(history["run_date"].dt.date) == {dt.date(2026, 2, 13), dt.date(2026, 2, 18)}
    # Re-running a date replaces its rows instead of adding more.
    run("break_rolling_comp")
    again = pd.read_parquet(dirs / "outputs" / "positions_daily" / "break_history.parquet")
    assert len(again) == len(history)


def test_each_step_runs_alone_in_order_with_no_parameters(dirs):
    from etl.steps.comp import CHAIN

    for name, _ in CHAIN:
        result = run(name)
        assert result["control"] == "positions_daily" and result["run_date"] == "2026-02-18", name
    harmonised = pd.read_parquet(dirs / "runs" / "positions_daily" / "2026-02-18" / "src_harm.parquet")
    caixa = harmonised[harmonised["asset_id"] == "CAIXA"].iloc[0]
    assert caixa["market_value"] == Decimal("1995.88")  # typed as "R$ 1.995,88" in the workbook
    assert harmonised["fund_cnpj_valid"].all()
    assert harmonised.loc[harmonised["asset_id"] == "OPC-ZERO", "quantity"].iloc[0] == 0  # "—"
    enriched = pd.read_parquet(dirs / "runs" / "positions_daily" / "2026-02-18" / "src_enriched.parquet")
    assert set(enriched["fund_name"]) == {"FIDC Agro Safra Ação", "FIM Crédito Privado São Paulo",
                                          "FIC FIA Índice Brasil"}


def test_a_step_out_of_order_says_what_to_run_first(dirs):
    with pytest.raises(DataError, match="run read_src_comp first"):
        run("pre_harmonisation_src_comp")


def test_missing_file_names_pattern_folder_and_date(dirs):
    with pytest.raises(DataError) as missing:
        run("read_src_comp", expectedRunDate="19/02/2026")
    text = str(missing.value)
    assert "Carteira_Diaria_20260219.xlsx" in text and "19/02/2026" in text and str(dirs / "inputs") in text


def _config(dirs) -> dict:
    return json.loads((dirs / "inputs" / "controls" / "positions_control.json").read_text(encoding="utf-8"))


def _write_config(dirs, config: dict) -> None:
    (dirs / "inputs" / "controls" / "positions_control.json").write_text(json.dumps(config), encoding="utf-8")


def test_bad_config_fails_with_the_field_path(dirs):
    config = _config(dirs)
    config["compare"][1]["abs_tolerance"] = -1
    config["source"]["harmonisation"]["types"]["quantity"] = "float"  # money is exact: there is no float type
    _write_config(dirs, config)
    with pytest.raises(ConfigError) as bad:
        run("reading_config_comp")
    assert "compare.1.abs_tolerance" in str(bad.value)
    assert "source.harmonisation.types.quantity" in str(bad.value)


def test_bad_expression_in_config_points_at_the_character(dirs):
    config = _config(dirs)
    config["rules"][0]["when"] = "status == 'src_only' and asset_type === 'x'"
    _write_config(dirs, config)
    with pytest.raises(ConfigError, match=r"rules\.0\.when.*position"):
        run("reading_config_comp")


def test_missing_column_is_named_with_the_columns_found(dirs):
    config = _config(dirs)
    config["target"]["harmonisation"]["rename"]["valor_de_mercado"] = "market_value"
    _write_config(dirs, config)
    for name in ("reading_config_comp", "read_tgt_comp", "pre_harmonisation_tgt_comp"):
        run(name)
    with pytest.raises(DataError) as missing:
        run("harmonisation_tgt_comp")
    assert "valor_de_mercado" in str(missing.value) and "valor_mercado" in str(missing.value)


def test_paths_outside_the_data_folders_are_refused(dirs):
    # A path parameter is refused when the parameters are validated (a 422 at submit) ...
    for hostile in ("/etc/passwd", "../../../../etc/passwd"):
        with pytest.raises(ValidationError, match="outside the folders steps may use"):
            run("read_csv", path=hostile)
    # ... and a path that comes from elsewhere (previous_outputs, a config file) when it is used.
    with pytest.raises(DatasetError, match="outside"):
        resolve("../../../../etc/passwd")
    inside = resolve("positions")
    assert inside == (dirs / "inputs" / "positions").resolve()


def test_workflow_steps_chain_by_reference(dirs):
    read = run("read_csv")
    assert read["row_count"] == 11
    filtered = registry.get_step("filter", False)
    from etl import runtime

    context = runtime.TaskContext(task_id="t", input_dir=dirs / "inputs", output_dir=dirs / "outputs",
                                  work_root=dirs / "runs", work_dir=dirs / "runs" / "tasks" / "t",
                                  previous_outputs={"dataset": read["dataset"]})
    with runtime.bind(context):
        kept = filtered.run(filtered.params_model.model_validate({"where": "valor_mercado > 1000000"}))
    assert 0 < kept["row_count"] < 11 and kept["rows_removed"] == 11 - kept["row_count"]
    for name in ("read_excel", "read_parquet", "convert_parquet", "join", "aggregate", "output"):
        assert run(name)["row_count"] > 0, name
    grouped = run("aggregate", by=["cnpj_fundo"], metrics={"valor_mercado": "sum"})
    assert grouped["row_count"] == 3
    written = run("output", format="csv", name="positions")
    text = (dirs / "outputs" / "workflow" / "positions.csv").read_bytes()
    assert text.startswith(b"\xef\xbb\xbf") and "descrição".encode() in text and written["row_count"] == 11


# --- Brazilian data --------------------------------------------------------------------------


def test_brazilian_numbers():
    values = pd.Series(["1.234,56", "R$ 1.995,88", "—", "(10,5)", "1234.5", "1.500", "-3,2", "1,108762", "x", None])
    parsed = brazil.parse_number(values).tolist()
    assert parsed[:8] == [1234.56, 1995.88, 0.0, -10.5, 1234.5, 1500.0, -3.2, 1.108762]
    assert pd.isna(parsed[8]) and pd.isna(parsed[9])


def test_brazilian_dates():
    parsed = brazil.parse_date(pd.Series(["18/02/2026", "2026-02-13", "31/02/2026", None]))
    assert parsed[0] == pd.Timestamp(2026, 2, 18) and parsed[1] == pd.Timestamp(2026, 2, 13)
    assert pd.isna(parsed[2]) and pd.isna(parsed[3])


@pytest.mark.parametrize(("cnpj", "valid"), [
    ("11.222.333/0001-81", True), ("11.222.333/0001-82", False), ("12.ABC.345/01DE-35", True),
    ("12.ABC.345/01DE-36", False), ("00.000.000/0000-00", False), ("1222333000181", False), ("abc", False),
])
def test_cnpj_check_digits_numeric_and_alphanumeric(cnpj, valid):
    cleaned = brazil.clean_cnpj(pd.Series([cnpj]))
    assert bool(brazil.validate_cnpj(cleaned)[0]) is valid


def test_cpf_and_documents():
    assert brazil.cpf_is_valid("529.982.247-25") and not brazil.cpf_is_valid("529.982.247-24")
    assert brazil.document_is_valid("529.982.247-25") and brazil.document_is_valid("11.222.333/0001-81")


def test_csv_latin1_bom_and_crlf(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("nome;valor\r\nAção;1.234,56\r\n".encode("latin-1"))
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffnome;valor\r\nAção;—\r\n".encode("utf-8"))
    for path in (latin, bom):
        raw = read_raw(path, "csv", ReadOptions())
        assert raw.iloc[0].tolist() == ["nome", "valor"] and raw.iloc[1, 0] == "Ação"
    assert brazil.parse_number(read_raw(bom, "csv", ReadOptions())["c1"].iloc[1:]).tolist() == [0.0]
    with pytest.raises(DatasetError, match="encoding"):
        read_raw(latin, "csv", ReadOptions(encoding="utf-8"))


def test_anbima_calendar():
    assert not is_business_day(dt.date(2026, 2, 16)) and not is_business_day(dt.date(2026, 2, 17))
    assert previous_business_day(dt.date(2026, 2, 18)) == dt.date(2026, 2, 13)
    assert add_business_days(dt.date(2026, 2, 13), 1) == dt.date(2026, 2, 18)
    assert business_days_between(dt.date(2026, 2, 13), dt.date(2026, 2, 18)) == 1
    # Carnival Monday and Tuesday count as holidays: a week with them has three business days.
    assert business_days_between(dt.date(2026, 2, 13), dt.date(2026, 2, 20)) == 3


# --- the expression language -----------------------------------------------------------------


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('touch /tmp/pwned')", "quantity.__class__", "open('/etc/passwd')",
    "(lambda: 1)()", "[c for c in quantity]", "eval('1')", "quantity if True else 0", "{'a': 1}",
    "exec('x=1')", "globals()",
])
def test_expressions_cannot_escape(hostile):
    frame = pd.DataFrame({"quantity": [1.0]})
    with pytest.raises(ExpressionError):
        Expression(hostile).evaluate(frame)


def test_expressions_evaluate_columns_and_point_at_errors():
    frame = pd.DataFrame({"q": [1.0, 2.0, None], "Nome Fundo": ["A", "B", "C"]})
    assert mask("`Nome Fundo` in ['A', 'C'] and notnull(q)", frame).tolist() == [True, False, False]
    assert Expression("round(q * 1.5, 1)").evaluate(frame).tolist()[:2] == [1.5, 3.0]
    with pytest.raises(ExpressionError) as bad:
        Expression("q > 1 and zz < 2").evaluate(frame)
    assert "unknown column 'zz'" in str(bad.value) and "position 11" in str(bad.value)
    assert str(bad.value).splitlines()[-1].index("^") == 2 + 10


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "report.xlsx"
    target.write_bytes(b"the previous report")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half a wor")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.xlsx"]
    with replacing(target) as tmp:
        tmp.write_bytes(b"the new report")
    assert target.read_bytes() == b"the new report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.xlsx"]
