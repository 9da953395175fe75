"""``python -m api prepare|serve|worker`` starts the service (``worker``: a Celery worker host); every other command is the client CLI (api.cli).

``serve`` is how Windows runs the service (Gunicorn does not run there); on Linux and macOS
start_server.sh runs Gunicorn with gunicorn.conf.py instead. The client commands import only
``api.cli`` and ``api.client`` (httpx), never the server.
"""

from __future__ import annotations

import sys

SERVER_COMMANDS = ("prepare", "serve", "worker")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SERVER_COMMANDS:
        from api.launcher import main as launch

        return launch(argv)
    from api.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
