"""A local stand-in for the six back-office portals, served on 127.0.0.1 for the browser tests.

Each platform lives under its own prefix (``/amplis/``, ``/maps/``, ...) with the login form,
report pages and downloads its recipe expects; the files are the bundled sample generators'.
It also offers what real portals do to a robot: a wrong-password page, a report that stays
queued for a few reloads, an empty report, and pages made slow on demand.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import threading
import time
import urllib.parse
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import xlsxwriter

from etl.samples import backoffice

USERS = {"amplis": ("robo.reag", "s3nh@-amplis"), "maps": ("robo", "maps-pass"), "fidc": ("robo@adm", "fidc-pass"),
         "jcot": ("robo", "jcot-pass"), "britech": ("robo", "britech-pass"), "qore": ("robo", "qore-pass")}

LOGIN_FORMS = {
    "amplis": ('<form method="post" action="login"><input id="usuario" name="u"><input id="senha" name="p" '
               'type="password"><button id="entrar">Entrar</button></form>', '<div class="erro-login">{}</div>'),
    "maps": ('<form method="post" action="login"><input name="login"><input name="password" type="password">'
             '<button type="submit">Login</button></form>', '<div class="alert-danger">{}</div>'),
    "fidc": ('<form method="post" action="login"><input id="email" name="u"><input id="senha" name="p" '
             'type="password"><button id="btn-login">Acessar</button></form>', '<p class="login-invalido">{}</p>'),
    "jcot": ('<form method="post" action="login.jsf"><input id="form-login:usuario" name="u">'
             '<input id="form-login:senha" name="p" type="password"><button id="form-login:acessar">Acessar</button>'
             '</form>', '<span class="ui-messages-error">{}</span>'),
    "britech": ('<form method="post" action="Login.aspx"><input id="txtLogin" name="u"><input id="txtSenha" name="p" '
                'type="password"><input type="submit" id="btnEntrar" value="Entrar"></form>', '<span id="lblErro">{}</span>'),
    "qore": ('<form method="post" action="entrar"><input name="username"><input name="password" type="password">'
             '<button id="entrar">Entrar</button></form>', '<div class="erro-autenticacao">{}</div>'),
}
HOME_MARK = {"amplis": '<ul id="menu-principal"></ul>', "maps": '<nav class="maps-menu"></nav>',
             "fidc": '<div id="painel"></div>', "jcot": '<div id="menu-jcot"></div>',
             "britech": '<div id="menuConsultas"></div>', "qore": '<div id="dashboard"></div>'}
LOGIN_PATHS = {"amplis": "login", "maps": "login", "fidc": "login", "jcot": "jcot/login.jsf",
               "britech": "Login.aspx", "qore": "entrar"}


def _page(body: str, title: str = "Portal") -> bytes:
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{body}</body></html>".encode()


def _xlsx(rows: list[list[Any]]) -> bytes:
    import io

    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    sheet = book.add_worksheet()
    for r, row in enumerate(rows):
        sheet.write_row(r, 0, row)
    book.close()
    return buffer.getvalue()


def _date(text: str) -> dt.date:
    for fmt in ("%d/%m/%Y", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise ValueError(text)


class Portal:
    """The test portal server; ``url(platform)`` is what ETL_PORTAL_<PLATFORM>_URL should hold."""

    def __init__(self) -> None:
        self.slow: dict[str, float] = {}  # path -> seconds to wait before answering
        self.empty: set[str] = set()  # report paths that answer "no data"
        self.queue_polls = 2  # reloads a requested estoque report stays queued
        self.requests: list[str] = []
        self.downloads: list[str] = []
        self._sessions: dict[str, str] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, platform: str) -> str:
        return f"http://127.0.0.1:{self.port}/{platform}/"

    def start(self) -> Portal:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- routing -------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        portal = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                portal._serve(self, "GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                portal._serve(self, "POST", self.rfile.read(length))

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        parts = urllib.parse.urlsplit(request.path)
        path = parts.path
        with self._lock:
            self.requests.append(path)
        if path in self.slow:
            time.sleep(self.slow[path])
        platform, _, rest = path.lstrip("/").partition("/")
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        if platform not in USERS:
            return self._send(request, 404, _page("não encontrado"))
        if rest == LOGIN_PATHS[platform]:
            return self._login(request, platform, method, form)
        cookie = SimpleCookie(request.headers.get("Cookie", ""))
        sid = cookie[f"sid_{platform}"].value if f"sid_{platform}" in cookie else None
        if sid not in self._sessions:
            return self._redirect(request, f"/{platform}/{LOGIN_PATHS[platform]}")
        try:
            status, headers, content = getattr(self, f"_{platform}")(rest, method, query, form)
        except (KeyError, ValueError) as exc:
            status, headers, content = 400, {}, _page(f'<div class="erro">Parâmetro inválido: {html.escape(str(exc))}</div>')
        if "Content-Disposition" in headers:
            with self._lock:
                self.downloads.append(path)
        self._send(request, status, content, headers)

    def _login(self, request: BaseHTTPRequestHandler, platform: str, method: str, form: dict[str, str]) -> None:
        form_html, error_html = LOGIN_FORMS[platform]
        if method == "GET":
            return self._send(request, 200, _page(form_html, "Login"))
        user = form.get("u") or form.get("login") or form.get("username")
        password = form.get("p") or form.get("password")
        if (user, password) != USERS[platform]:
            return self._send(request, 200, _page(error_html.format("Usuário ou senha inválidos") + form_html))
        sid = f"{platform}-{next(self._ids)}"
        self._sessions[sid] = user
        home = {"jcot": "jcot/home.jsf", "britech": "Home.aspx"}.get(platform, "home")
        self._redirect(request, f"/{platform}/{home}", {"Set-Cookie": f"sid_{platform}={sid}; Path=/{platform}/"})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, content: bytes, headers: dict[str, str] | None = None) -> None:
        request.send_response(status)
        headers = {"Content-Type": "text/html; charset=utf-8", **(headers or {})}
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(content)))
        request.end_headers()
        request.wfile.write(content)

    def _redirect(self, request: BaseHTTPRequestHandler, location: str, headers: dict[str, str] | None = None) -> None:
        self._send(request, 303, b"", {"Location": location, **(headers or {})})

    @staticmethod
    def _file(name: str, content: bytes, kind: str) -> tuple[int, dict[str, str], bytes]:
        types = {"csv": "text/csv; charset=latin-1", "pdf": "application/pdf", "xml": "application/xml",
                 "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
        return 200, {"Content-Type": types[kind], "Content-Disposition": f'attachment; filename="{name}"'}, content

    def _home(self, platform: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, _page(HOME_MARK[platform] + "<h1>Bem-vindo</h1>")

    # --- platforms -----------------------------------------------------------------------------

    def _amplis(self, rest: str, method: str, q: dict[str, str], form: dict[str, str]):
        if rest == "home":
            return self._home("amplis")
        if rest.startswith("relatorios/"):
            report = rest.split("/", 1)[1]
            day = _date(q["data"])
            link = f"arquivos/{report}.csv?conta={q['conta']}&data={day:%Y-%m-%d}"
            if report in self.empty:
                return 200, {}, _page('<p class="sem-movimentacao">Nenhuma movimentação no período</p>')
            links = f'<a id="exportar-csv" href="/amplis/{link}">CSV</a>'
            if report == "carteira":
                links += f'<a id="exportar-pdf" href="/amplis/arquivos/carteira.pdf?conta={q["conta"]}&data={day:%Y-%m-%d}">PDF</a>'
            return 200, {}, _page(HOME_MARK["amplis"] + links)
        if rest.startswith("arquivos/"):
            name = rest.split("/", 1)[1]
            day = _date(q["data"])
            if name.endswith(".pdf"):
                return self._file("carteira.pdf", backoffice.carteira_pdf("AGRO SAFRA", "11.222.333/0001-81", day), "pdf")
            text = f"Conta;Data;Valor\r\n{q['conta']};{day:%d/%m/%Y};1.234,56\r\n".encode("latin-1")
            return self._file(f"{name.split('.')[0]}_{day:%Y%m%d}.csv", text, "csv")
        raise KeyError(rest)

    def _maps(self, rest: str, method: str, q: dict[str, str], form: dict[str, str]):
        if rest == "home":
            return self._home("maps")
        if rest.startswith("carteiras/"):
            kind = rest.split("/", 1)[1]
            base = f"/maps/arquivos/{kind}?fundo={q['fundo']}&data={q['data']}"
            return 200, {}, _page(HOME_MARK["maps"] + f'<a class="exportar-xlsx" href="{base}&f=xlsx">Excel</a>'
                                  f'<a class="exportar-pdf" href="{base}&f=pdf">PDF</a>')
        if rest.startswith("arquivos/"):
            kind = "Composicao" if rest.endswith("composicao") else "Posicao"
            day = _date(q["data"])
            if q["f"] == "pdf":
                return self._file(f"{kind}.pdf", backoffice.carteira_pdf(q["fundo"], "11.222.333/0001-81", day), "pdf")
            return self._file(f"{kind}.xlsx", backoffice.maps_workbook(q["fundo"], day, kind), "xlsx")
        raise KeyError(rest)

    def _fidc(self, rest: str, method: str, q: dict[str, str], form: dict[str, str]):
        if rest == "home":
            return self._home("fidc")
        if rest == "relatorios/estoque" and method == "GET":
            options = "".join(f"<option>{code}</option>" for code in ("AGROSAFRA", "CREDSP"))
            return 200, {}, _page(
                HOME_MARK["fidc"] + f'<form method="post"><select id="fundo" name="fundo">{options}</select>'
                '<input id="data-referencia" name="data"><button id="solicitar">Solicitar</button></form>')
        if rest == "relatorios/estoque" and method == "POST":
            job = str(next(self._ids))
            self._jobs[job] = {"fund": form["fundo"], "day": _date(form["data"]), "polls": 0}
            return 303, {"Location": f"/fidc/relatorios/estoque/{job}"}, b""
        if rest.startswith("relatorios/estoque/"):
            job = self._jobs[rest.rsplit("/", 1)[1]]
            job["polls"] += 1
            if job["polls"] <= self.queue_polls:
                return 200, {}, _page('<p class="status">Relatório na fila de processamento...</p>')
            return 200, {}, _page(f'<a id="baixar-estoque" href="/fidc/arquivos/{rest.rsplit("/", 1)[1]}.csv">Baixar</a>')
        if rest.startswith("arquivos/"):
            job = self._jobs[rest.rsplit("/", 1)[1].split(".")[0]]
            return self._file("estoque.csv", backoffice.estoque_csv(job["fund"], job["day"]), "csv")
        raise KeyError(rest)

    def _jcot(self, rest: str, method: str, q: dict[str, str], form: dict[str, str]):
        if rest == "jcot/home.jsf":
            return self._home("jcot")
        if rest == "jcot/relatorios/posicao-cotistas.jsf":
            return 200, {}, _page(
                '<form method="get" action="/jcot/jcot/relatorios/resultado.jsf"><input id="filtro:inicio" name="inicio">'
                '<input id="filtro:fim" name="fim"><button id="filtro:consultar">Consultar</button></form>')
        if rest == "jcot/relatorios/resultado.jsf":
            start, end = _date(q["inicio"]), _date(q["fim"])
            if end < start:
                return 200, {}, _page('<span class="ui-messages-error">Período inválido</span>')
            return 200, {}, _page(f'<a id="exportar-xlsx" href="/jcot/jcot/arquivos/posicao.xlsx?inicio={start}&fim={end}">XLSX</a>')
        if rest == "jcot/arquivos/posicao.xlsx":
            rows = [["Cotista", "CPF/CNPJ", "Fundo", "Data", "Quantidade de cotas", "Valor"],
                    ["João da Silva", "529.982.247-25", "AGROSAFRA", q["fim"], 1000.5, 1234.56]]
            return self._file("posicao_cotistas.xlsx", _xlsx(rows), "xlsx")
        raise KeyError(rest)

    def _britech(self, rest: str, method: str, q: dict[str, str], form: dict[str, str]):
        if rest == "Home.aspx":
            return self._home("britech")
        if rest == "Consultas/ConsultaSalva.aspx":
            name = q["nome"]
            if name in self.empty:
                return 200, {}, _page('<table class="grid"></table><p class="grid-vazia">Nenhum registro</p>')
            return 200, {}, _page(f'<table class="grid"><tr><td>{html.escape(name)}</td></tr></table>'
                                  f'<a id="btnExportarExcel" href="/britech/Exportar.aspx?nome={urllib.parse.quote(name)}'
                                  f'&data={q["data"]}">Exportar</a>')
        if rest == "Exportar.aspx":
            return self._file(f"{q['nome']}.xlsx", _xlsx([["Consulta", "Data"], [q["nome"], q["data"]]]), "xlsx")
        raise KeyError(rest)

    def _qore(self, rest: str, method: str, q: dict[str, str], form: dict[str, str]):
        if rest == "home":
            return self._home("qore")
        parts = rest.split("/")
        if len(parts) == 3 and parts[0] == "fundos" and parts[2] == "carteira":
            links = "".join(f'<a data-formato="{f}" href="/qore/arquivos/{parts[1]}.{f}?data={q["data"]}">{f}</a>'
                            for f in ("pdf", "xlsx", "xml"))
            return 200, {}, _page(links)
        if parts[0] == "arquivos":
            fund, kind = parts[1].rsplit(".", 1)
            day = _date(q["data"])
            if kind == "pdf":
                return self._file("carteira.pdf", backoffice.carteira_pdf(fund, "12.ABC.345/01DE-35", day), "pdf")
            if kind == "xlsx":
                return self._file("carteira.xlsx", _xlsx([["Fundo", "Data"], [fund, q["data"]]]), "xlsx")
            xml = f'<?xml version="1.0"?><carteira fundo="{fund}" data="{day}"/>'.encode()
            return self._file("carteira.xml", xml, "xml")
        raise KeyError(rest)
