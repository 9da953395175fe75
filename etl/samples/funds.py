"""Fund files made up to mimic the layouts (never customer data): a CNAB-444 FIDC remittance with the
originator's CSV, and a Fundos.NET FIDC monthly report (informe mensal) XML with decimal commas.

``python -m etl.samples.funds`` rewrites them under ``etl/samples/cnab`` and ``etl/samples/fundosnet``;
the tests build variants (a broken trailer, breaks in the CSV) with the same functions.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from pathlib import Path

CNAB_WIDTH = 444


def check_digits_cnpj(body: str) -> str:
    def digit(text: str) -> str:
        weights = list(range(len(text) - 7, 1, -1)) + list(range(9, 1, -1))
        remainder = sum(int(c) * w for c, w in zip(text, weights)) % 11
        return "0" if remainder < 2 else str(11 - remainder)

    first = digit(body)
    return body + first + digit(body + first)


def check_digits_cpf(body: str) -> str:
    for size in (9, 10):
        total = sum(int(d) * w for d, w in zip(body, range(size + 1, 1, -1)))
        body += str(total * 10 % 11 % 10)
    return body


def _put(line: list[str], start: int, end: int, value: str, numeric: bool = False) -> None:
    width = end - start + 1
    text = value.rjust(width, "0") if numeric else value.ljust(width)
    assert len(text) == width, (start, end, value)
    line[start - 1:end] = list(text)


def _cents(value: Decimal, width: int) -> str:
    return str(int(value * 100)).rjust(width, "0")


def remittance(count: int = 64, seed: int = 11) -> list[dict]:
    """Receivables with face and present values to the cent (present < face)."""
    rng = random.Random(seed)
    rows = []
    for n in range(1, count + 1):
        face = Decimal(rng.randint(10_000, 9_000_000)) / 100
        present = (face * Decimal(rng.randint(9000, 9990)) / 10000).quantize(Decimal("0.01"))
        sacado = check_digits_cpf(f"{rng.randint(10**8, 10**9 - 1)}") if n % 3 else check_digits_cnpj(
            f"{rng.randint(10**7, 10**8 - 1):08d}0001")
        rows.append({"seu_numero": f"DP{n:08d}", "vencimento": dt.date(2026, 3, 1) + dt.timedelta(days=n),
                     "emissao": dt.date(2026, 1, 5), "valor_face": face, "valor_presente": present,
                     "documento_sacado": sacado, "nome_sacado": f"Sacado Exemplo {n} Ltda", "cep": "02013003",
                     "cedente": "07710496000136", "termo": f"TC{n:04d}"})
    return rows


def write_cnab444(path: Path, rows: list[dict], *, trailer_count: int | None = None) -> Path:
    lines = []
    header = [" "] * CNAB_WIDTH
    for start, end, value, numeric in ((1, 1, "0", False), (2, 2, "1", False), (3, 9, "REMESSA", False),
                                       (10, 11, "01", False), (12, 26, "COBRANCA", False),
                                       (27, 46, "ORIGINADOR0001", False), (47, 76, "FIDC EXEMPLO MULTISSETORIAL", False),
                                       (77, 79, "611", False), (80, 94, "PAULISTA S.A.", False),
                                       (95, 100, "180226", False), (109, 110, "MX", False), (111, 117, "1", True)):
        _put(header, start, end, value, numeric)
    lines.append(header)
    for row in rows:
        line = [" "] * CNAB_WIDTH
        inscription = "01" if len(row["documento_sacado"]) == 11 else "02"
        for start, end, value, numeric in (
                (1, 1, "1", False), (21, 22, "01", False), (25, 28, "0101", False), (38, 62, row["termo"], False),
                (63, 65, "611", False), (71, 81, "0", True), (83, 92, "0", True), (95, 100, "000000", False),
                (109, 110, "01", False), (111, 120, row["seu_numero"], False),
                (121, 126, f"{row['vencimento']:%d%m%y}", False), (127, 139, _cents(row["valor_face"], 13), False),
                (148, 149, "01", False), (151, 156, f"{row['emissao']:%d%m%y}", False),
                (174, 192, row["termo"], False), (193, 205, _cents(row["valor_presente"], 13), False),
                (206, 218, "0", True), (219, 220, inscription, False), (221, 234, row["documento_sacado"], True),
                (235, 274, row["nome_sacado"], False), (275, 314, "Rua Exemplo, 100 - São Paulo", False),
                (327, 334, row["cep"], False), (335, 380, "Cedente Exemplo Comércio S.A.", False),
                (381, 394, row["cedente"], False)):
            _put(line, start, end, value, numeric)
        lines.append(line)
    lines.append([" "] * CNAB_WIDTH)
    lines[-1][0] = "9"
    for number, line in enumerate(lines, start=1):
        stated = trailer_count if (trailer_count is not None and number == len(lines)) else number
        _put(line, 439, 444, str(stated), True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join("".join(line) + "\r\n" for line in lines).encode("latin-1"))
    return path


def _brazilian(value: Decimal) -> str:
    text = f"{value:,.2f}"
    return text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")


def write_stock_csv(path: Path, rows: list[dict], *, changed: dict[str, Decimal] | None = None,
                    missing: set[str] | None = None) -> Path:
    """The remittance as the originator's CSV (';', decimal comma, latin-1), optionally with breaks."""
    changed, missing = changed or {}, missing or set()
    lines = ["seu_numero;documento_sacado;cep;vencimento;valor_face;valor_presente"]
    for row in rows:
        if row["seu_numero"] in missing:
            continue
        present = changed.get(row["seu_numero"], row["valor_presente"])
        lines.append(f"{row['seu_numero']};{row['documento_sacado']};{row['cep']};{row['vencimento']:%d/%m/%Y};"
                     f"{_brazilian(row['valor_face'])};{_brazilian(present)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    return path


INFORME = """<?xml version="1.0" encoding="windows-1252"?>
<DOC_ARQ xmlns="urn:fidc">
  <CAB_INFORM>
    <COD_DOC>33</COD_DOC><VERSAO>4.0</VERSAO><DT_COMPT>01/2026</DT_COMPT>
    <NR_CNPJ_FUNDO>07.710.496/0001-36</NR_CNPJ_FUNDO><NR_CNPJ_ADM>11.222.333/0001-81</NR_CNPJ_ADM>
  </CAB_INFORM>
  <LISTA_INFORM>
    <PATRIM_LIQ><VL_PATRIM_LIQ>125.430.221,37</VL_PATRIM_LIQ><VL_PATRIM_LIQ_MEDIO>124.998.100,05</VL_PATRIM_LIQ_MEDIO>
    </PATRIM_LIQ>
    <ATIVO><VL_SOM_APLIC_ATIVO>127.000.000,10</VL_SOM_APLIC_ATIVO><VL_DISPONIB>1.250,20</VL_DISPONIB>
      <CARTEIRA><VL_DIR_CRED_SEM_AQUIS>100.000.000,00</VL_DIR_CRED_SEM_AQUIS><VL_DIR_CRED_COM_AQUIS>26.998.749,90</VL_DIR_CRED_COM_AQUIS></CARTEIRA>
    </ATIVO>
    <PASSIVO><VL_PASSIVO>1.569.778,93</VL_PASSIVO><VL_CPR>1.569.778,93</VL_CPR></PASSIVO>
    <DIR_CRED_VENC_INAD>
      <FAIXA><PRAZO>30</PRAZO><VL_VENC>152.340,11</VL_VENC></FAIXA>
      <FAIXA><PRAZO>60</PRAZO><VL_VENC>80.000,01</VL_VENC></FAIXA>
      <FAIXA><PRAZO>90</PRAZO><VL_VENC>0,30</VL_VENC></FAIXA>
      <FAIXA><PRAZO>120</PRAZO><VL_VENC>—</VL_VENC></FAIXA>
    </DIR_CRED_VENC_INAD>
    <CLASSE_COTA><TP_CLASSE>SENIOR</TP_CLASSE><QT_COTAS>80.000,00000000</QT_COTAS><VL_COTA>1.254,30221370</VL_COTA></CLASSE_COTA>
    <CLASSE_COTA><TP_CLASSE>MEZANINO</TP_CLASSE><QT_COTAS>10.000,00000000</QT_COTAS><VL_COTA>1.100,10000000</VL_COTA></CLASSE_COTA>
    <CLASSE_COTA><TP_CLASSE>SUBORDINADA</TP_CLASSE><QT_COTAS>5.000,00000000</QT_COTAS><VL_COTA>2.854,39470000</VL_COTA></CLASSE_COTA>
  </LISTA_INFORM>
</DOC_ARQ>
"""


def write_informe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(INFORME.encode("cp1252"))
    return path


HERE = Path(__file__).resolve().parent
SAMPLE_REMITTANCE = "cnab/remessa_20260218.rem"
SAMPLE_REMITTANCE_CSV = "cnab/remessa_20260218.csv"
SAMPLE_INFORME = "fundosnet/informe_mensal_202601.xml"


def main() -> None:
    rows = remittance(64)
    write_cnab444(HERE / SAMPLE_REMITTANCE, rows)
    write_stock_csv(HERE / SAMPLE_REMITTANCE_CSV, rows)
    write_informe(HERE / SAMPLE_INFORME)
    print(f"wrote {SAMPLE_REMITTANCE}, {SAMPLE_REMITTANCE_CSV} and {SAMPLE_INFORME} under {HERE}")


if __name__ == "__main__":
    main()
