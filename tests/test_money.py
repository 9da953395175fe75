"""Exact money at the edges: literals in expressions, floats from typed cells, missing amounts in the
control, amounts that look like codes, ODBC decimals, two-decimal CSV money, CNAB 240 segment pairs."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest

from etl import money
from etl.expr import Expression, ExpressionError, mask


def _money(*values: str) -> pd.Series:
    return money.from_machine_text(pd.Series(values, dtype="string"))


def test_decimal_literals_keep_money_exact_in_expressions():
    frame = money.widened(pd.DataFrame({"valor": _money("0.10", "10.00", "954.66"),
                                        "quantidade": pd.Series([1, 2, 3], dtype="Int64"),
                                        "preco": [1.5, 2.5, 3.5]}))
    times = Expression("valor * 1.1").evaluate(frame)
    assert money.is_decimal(times) and list(money.tidy(times)) == [Decimal("0.11"), Decimal("11.00"),
                                                                    Decimal("1050.126")]
    rounded = money.tidy(Expression("round(valor * 1.1, 2)").evaluate(frame))
    assert list(rounded) == [Decimal("0.11"), Decimal("11.00"), Decimal("1050.13")]
    assert list(money.tidy(Expression("quantidade * 1.5").evaluate(frame))) == [Decimal("1.50"), Decimal("3.00"),
                                                                                Decimal("4.50")]
    assert list(money.tidy(Expression("valor * (1/4)").evaluate(frame))) == [Decimal("0.025"), Decimal("2.50"),
                                                                             Decimal("238.665")]
    # 0.1 * 1.1 is exactly 0.11 here (as a double it is 0.11000000000000001).
    assert list(mask("valor * 1.1 == 0.11", frame)) == [True, False, False]
    assert list(mask("valor in [0.1, 954.66]", frame)) == [True, False, True]
    # Beside a float column a literal is a float, as before.
    assert Expression("preco * 2.0").evaluate(frame).dtype == "float64"
    # Exact literals keep the bounds: a decimal of a million digits is refused when parsed.
    with pytest.raises(ExpressionError, match="more than 400 digits"):
        Expression("9.9 ** 999990")
    with pytest.raises(ExpressionError, match="bits"):
        Expression("9 ** 9.0 ** 9")


def test_large_and_tiny_floats_become_exact_decimals_and_unconvertible_ones_warn():
    from etl import columns

    floats = pd.Series([12345678901.23, 1e15, 1e-7, 0.1 + 0.2, float("nan")])
    assert list(money.to_decimal(floats))[:4] == [Decimal("12345678901.23"), Decimal(1000000000000000),
                                                  Decimal("0.0000001"), Decimal("0.3")]
    parsed, bad = money.parse_decimal(pd.Series([123456789012.34, float("inf"), 1e40, float("nan")]))
    assert parsed.iloc[0] == Decimal("123456789012.34") and bad.tolist() == [False, True, True, False]
    frame = pd.DataFrame({"valor": [12345678901.23, float("inf")]})
    found = columns.Typing()
    columns.apply_type(frame, "valor", "money", "posicoes", found)
    assert frame["valor"].iloc[0] == Decimal("12345678901.23")
    assert found.warnings == ["posicoes.valor: 1 value(s) are not numbers, e.g. inf"]


def test_a_matched_pair_with_an_amount_missing_on_one_side_is_a_break():
    from etl.comp.config import Compare
    from etl.comp.stages import apply_rules, combine

    src = pd.DataFrame({"seu_numero": pd.Series(["A", "B", "C"], dtype="string"),
                        "valor": _money("100.00", "200.00", None)})
    tgt = pd.DataFrame({"seu_numero": pd.Series(["A", "B", "C"], dtype="string"),
                        "valor": _money("100.00", None, None)})
    compare = [Compare(column="valor", abs_tolerance=Decimal("0.01"))]
    result = apply_rules(combine(src, tgt, ["seu_numero"], compare), compare, []).set_index("seu_numero")
    assert result["break"].to_dict() == {"A": False, "B": True, "C": False}
    assert result.loc["B", "break_type"] == "value_difference"


def test_whole_amounts_of_equal_width_are_numbers_and_aggregate_refuses_text_sums(dirs):
    from etl.datasets import DatasetError
    from tests.steps import run

    (dirs / "inputs" / "aportes.csv").write_bytes(b"cotista;valor;vencimento;cnpj_fundo\r\n"
                                                  b"A;150000;200326;07710496000136\r\nB;250000;210326;07710496000136"
                                                  b"\r\nC;300000;220326;07710496000136\r\n")
    read = run("read_csv", path="aportes.csv")
    assert read["types"]["valor"] != "text" and read["types"]["vencimento"] == "text"
    total = run("aggregate", dataset=read["dataset"], by=[], metrics={"valor": "sum"})
    assert total["calculation_results"]["table"] == [[700000]]
    kept = run("read_csv", path="aportes.csv", types={"valor": "text"})
    with pytest.raises(DatasetError, match=r"'valor' is text.*types: \{valor: money\}"):
        run("aggregate", dataset=kept["dataset"], by=["cnpj_fundo"], metrics={"valor": "sum"})


def test_odbc_decimal_cells_read_back_exactly_in_either_convention():
    from etl.datasets import _text_frame

    rows = [["titulo", "valor"], ["A", Decimal("1.500")], ["B", Decimal("1234567.891")], ["C", Decimal("-0.010")]]
    for mark in (",", "."):
        cells = _text_frame(rows, mark)["c1"].iloc[1:]
        parsed, bad = money.parse_decimal(cells, mark, min_scale=3)
        assert list(parsed) == [Decimal("1.500"), Decimal("1234567.891"), Decimal("-0.010")] and not bad.any()


def test_csv_money_has_exactly_two_places_rounded_half_up_and_places_keeps_rates(dirs):
    from tests.steps import run

    (dirs / "inputs" / "carteira.csv").write_bytes(b"titulo;valor;taxa\r\nA;10.000,10;1,2345\r\n"
                                                   b"B;0,125;2,5\r\nC;-0,125;0,75\r\nD;999,995;1\r\n")
    read = run("read_csv", path="carteira.csv", types={"valor": "number", "taxa": "number"})
    derived = run("derive", dataset=read["dataset"], columns={"terco": "valor / 3"})
    run("output", dataset=derived["dataset"], format="csv", name="carteira", places={"taxa": 4})
    text = (dirs / "outputs" / "workflow" / "carteira.csv").read_text(encoding="utf-8-sig")
    assert text.replace('"', "").splitlines() == ["titulo;valor;taxa;terco", "A;10000,10;1,2345;3333,37", "B;0,13;2,5000;0,04",
                                 "C;-0,13;0,7500;-0,04", "D;1000,00;1,0000;333,33"]
    weighted = run("aggregate", dataset=read["dataset"], by=[], metrics={"taxa": "weighted_mean"},
                   weights={"taxa": "valor"})
    run("output", dataset=weighted["dataset"], format="csv", name="media", decimal=".")
    assert (dirs / "outputs" / "workflow" / "media.csv").read_text(encoding="utf-8-sig").splitlines()[1] == '"1.21"'


def test_cnab240_segment_q_must_follow_its_p_and_the_error_names_the_line(dirs):
    from etl.cnab import CnabError
    from tests.steps import run
    from tests.test_fund_data import _fixed

    def record(kind: str, extra: dict) -> str:
        return _fixed(240, {(1, 3): "341", (8, 8): kind, **extra})

    def p(n: int, value: str) -> str:
        return record("3", {(4, 7): "0001", (9, 13): str(n), (14, 14): "P", (63, 77): f"DOC{n}",
                            (78, 85): "20032026", (86, 100): value})

    def q(n: int, payer: str) -> str:
        return record("3", {(4, 7): "0001", (9, 13): str(n), (14, 14): "Q", (19, 33): payer,
                            (34, 73): f"Pagador {n}", (129, 136): "02013003"})

    def write(details: list[str]) -> None:
        lines = [record("0", {(4, 7): "0000", (144, 151): "18022026"}), record("1", {(4, 7): "0001"}), *details,
                 record("5", {(4, 7): "0001", (18, 23): str(len(details) + 2)})]
        lines.append(record("9", {(4, 7): "9999", (18, 23): "1", (24, 29): str(len(lines) + 1)}))
        (dirs / "inputs" / "cobranca.rem").write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))

    # Title 1 lost its Q; title 2's Q came after an unrelated P: counts pair up (2 P, 2 Q), payers would not.
    write([p(1, "150000"), p(2, "8550"), q(3, "11222333000181"), q(4, "07710496000136")])
    with pytest.raises(CnabError, match=r"cobranca.rem line 3: segment P has no segment Q after it \(line 4 is "
                                        r"segment 'P'\)"):
        run("read_cnab", path="cobranca.rem", layout="cnab240")
    write([p(1, "150000"), q(2, "07710496000136"), p(3, "8550"), q(4, "11222333000181")])
    assert run("read_cnab", path="cobranca.rem", layout="cnab240")["totals"]["valor_titulo"] == "1585.50"
