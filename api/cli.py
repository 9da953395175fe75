"""The command line for scripts: ``python -m api run STEP --wait`` and friends, with stable exit codes.

Human output by default (a progress bar and live log lines on a terminal), ``--json`` for machines.
Only the client (httpx) is imported here, never the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.cli_output import Output
from api.client import DEFAULT_URL, Client, Task, errors
from api.client.retry import TERMINAL

# Stable exit codes (README "Client and command line" documents them): scripts branch on them.
EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_TIMEOUT = 4
EXIT_UNREACHABLE = 5
EXIT_AUTH = 6
EXIT_NOT_FOUND = 7
EXIT_CONFLICT = 8
EXIT_BUSY = 9
EXIT_UNHEALTHY = 10
EXIT_SERVER_ERROR = 11
EXIT_INTERRUPTED = 130

BY_STATUS = {"completed": EXIT_COMPLETED, "failed": EXIT_FAILED, "stopped": EXIT_STOPPED}
# Without --timeout, a command keeps retrying an unreachable server this long (a restart takes seconds).
RETRY_FOR_SECONDS = 60.0


class Usage(Exception):
    """The command line is wrong."""


# --- parameters ----------------------------------------------------------------------------------

def parse_params(pairs: list[str], files: list[str]) -> dict[str, Any]:
    """``--params-file`` objects merged in order, then ``--param k=v`` (text) and ``k:=json`` (typed)."""
    params: dict[str, Any] = {}
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8-sig")
            loaded = json.loads(text)
        except OSError as exc:
            raise Usage(f"cannot read --params-file {name}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise Usage(f"--params-file {name} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise Usage(f"--params-file {name} must hold a JSON object of parameters")
        params.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise Usage(f"--param {pair!r}: write name=value (text) or name:=JSON (number, list, ...)")
        if name.endswith(":"):
            try:
                params[name[:-1]] = json.loads(value)
            except ValueError:
                raise Usage(f"--param {pair!r}: the value after := must be JSON") from None
        else:
            # Text: the server converts it as the step's schema says, and codes such as a CNPJ or
            # "007" keep their leading zeros.
            params[name] = value
    return params


# --- waiting and following -----------------------------------------------------------------------

def _finish(out: Output, task: Task, show_result: bool = True) -> int:
    state = task.state
    status = state["status"]
    if out.json:
        out.data(state)
    elif status == "completed":
        out.note(f"task {task.task_id} completed in {state.get('duration_seconds')} s")
        if show_result:
            out.data(state.get("output") if "output" in state else task.output().get("result"))
    elif status == "failed":
        error = state.get("error") or {}
        out.note(f"task {task.task_id} failed: {error.get('type', 'Error')}: {error.get('message', '')}")
    else:
        out.note(f"task {task.task_id} stopped: {state.get('message') or ''}")
    return BY_STATUS[status]


def _watch(out: Output, task: Task, timeout: float | None, *, logs: bool, since: int = 0,
           show_result: bool = True) -> int:
    """Wait for the task to end: long-polls, plus log lines (``logs``) and the bar on a terminal."""
    if not logs and not out.bar:
        task.wait(timeout)
        return _finish(out, task, show_result)
    for event in task.follow(since=since, timeout=timeout):
        if event.type == "log":
            if logs:
                if out.json:
                    out.data({"type": "log", **event.data})
                else:
                    out.line(event.text)
        elif event.type in ("status", "progress"):
            out.progress({**task.state, **event.data})
            if out.json and logs:
                out.data({"type": event.type, **event.data})
    out.clear_bar()
    if task.status not in TERMINAL or task.client.uses_event_stream:
        task.refresh()  # an event's end state may be shorter than /status (error, output, duration)
    return _finish(out, task, show_result)


def _remaining(started: float, timeout: float | None) -> float | None:
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


# --- commands ------------------------------------------------------------------------------------

def cmd_run(client: Client, out: Output, args: argparse.Namespace) -> int:
    params = parse_params(args.param or [], args.params_file or [])
    started = time.monotonic()
    task = client.run(args.step, params, timeout=args.timeout, idempotency_key=args.idempotency_key)
    if not (args.wait or args.follow):
        if out.json:
            out.data(task.state)
        else:
            out.line(task.task_id)
            out.note(f"task {task.task_id} {task.status} ({task.step_name})")
        return EXIT_COMPLETED
    out.note(f"task {task.task_id} {task.status} ({task.step_name})")
    return _watch(out, task, _remaining(started, args.timeout), logs=args.follow)


def cmd_wait(client: Client, out: Output, args: argparse.Namespace) -> int:
    return _watch(out, client.task(args.task_id), args.timeout, logs=args.follow)


def cmd_status(client: Client, out: Output, args: argparse.Namespace) -> int:
    state = client.status(args.task_id)
    if out.json:
        out.data(state)
        return EXIT_COMPLETED
    out.line(f"{state['task_id']}  {state['step_name']}  {state['status']}  {state.get('progress', 0):.1f}%  "
             f"{state.get('message') or ''}")
    if state.get("error"):
        out.line(f"error: {state['error'].get('type')}: {state['error'].get('message')}")
    return EXIT_COMPLETED


def cmd_output(client: Client, out: Output, args: argparse.Namespace) -> int:
    answer = client.output(args.task_id)
    if out.json:
        out.data(answer)
    elif answer["status"] == "completed":
        out.data(answer.get("result"))
    elif answer.get("error"):
        error = answer["error"]
        out.line(error.get("traceback") or f"{error.get('type')}: {error.get('message')}")
    else:
        out.line(f"{answer['status']}: {answer.get('message') or ''}")
    return BY_STATUS[answer["status"]]


def cmd_logs(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.follow:
        return _watch(out, client.task(args.task_id), args.timeout, logs=True, since=args.since, show_result=False)
    since = args.since
    while True:
        page = client.logs(args.task_id, since)
        for number, text in enumerate(page["lines"], since + 1):
            out.data({"line": number, "text": text}) if out.json else out.line(text)
        since = page["next"]
        if not page["lines"]:
            return EXIT_COMPLETED


def cmd_stop(client: Client, out: Output, args: argparse.Namespace) -> int:
    answer = client.stop(args.task_id)
    if not args.wait:
        out.data(answer) if out.json else out.line(f"{args.task_id}  {answer['status']}  {answer.get('detail', '')}")
        return EXIT_COMPLETED
    return _watch(out, client.task(args.task_id), args.timeout, logs=False, show_result=False)


def cmd_tasks(client: Client, out: Output, args: argparse.Namespace) -> int:
    for count, row in enumerate(client.tasks(status=args.status, step=args.step, page_size=min(args.limit, 500))):
        if count >= args.limit:
            break
        if out.json:
            out.data(row)
        else:
            out.line(f"{row['task_id']}  {row['step_name']:<28} {row['status']:<9} {row.get('progress', 0):5.1f}%  "
                     f"{row.get('created_at', '')}")
    return EXIT_COMPLETED


def cmd_steps(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.step:
        step = client.steps(args.step)
        if out.json:
            out.data(step)
            return EXIT_COMPLETED
        out.line(f"{step['name']}: {step.get('title', '')}")
        if step.get("description"):
            out.line(step["description"])
        schema = step.get("parameters") or {}
        required = set(schema.get("required", []))
        for name, spec in (schema.get("properties") or {}).items():
            kind = spec.get("type") or "/".join(s.get("type", "?") for s in spec.get("anyOf", [])) or "any"
            default = "" if "default" not in spec else f" = {json.dumps(spec['default'], ensure_ascii=False)}"
            flag = " (required)" if name in required else ""
            out.line(f"  {name}: {kind}{default}{flag}  {spec.get('description', '')}".rstrip())
        return EXIT_COMPLETED
    steps = client.steps()
    if out.json:
        out.data(steps)
    else:
        for step in steps:
            out.line(f"{step['name']:<32} {step.get('title', '')}")
    return EXIT_COMPLETED


def cmd_health(client: Client, out: Output, args: argparse.Namespace) -> int:
    health = client.health()
    if out.json:
        out.data(health)
    else:
        out.line(health.get("status", "?"))
        for name in health.get("failing", []):
            out.line(f"  failing: {name}: {health['checks'][name].get('detail', '')}")
    return EXIT_COMPLETED if health.get("status") == "ok" else EXIT_UNHEALTHY


def cmd_stats(client: Client, out: Output, args: argparse.Namespace) -> int:
    out.data(client.stats())
    return EXIT_COMPLETED


COMMANDS: dict[str, Callable[[Client, Output, argparse.Namespace], int]] = {
    "run": cmd_run, "wait": cmd_wait, "status": cmd_status, "output": cmd_output, "logs": cmd_logs,
    "stop": cmd_stop, "tasks": cmd_tasks, "steps": cmd_steps, "health": cmd_health, "stats": cmd_stats,
}

EPILOG = """\
exit codes: 0 completed (or done), 1 task failed, 2 usage or invalid parameters, 3 task stopped,
4 timed out (the task keeps running; its id is printed), 5 server unreachable or unavailable,
6 API key missing or without the role, 7 no such task or step, 8 wrong state or conflict,
9 queue full or rate limited past the timeout, 10 server unhealthy, 11 server error, 130 interrupted.
The service itself starts with `python -m api serve` (or `prepare` to ready the storage only;
`worker` starts a Celery worker host in scale-out mode)."""


def build_parser() -> argparse.ArgumentParser:
    # The common options go before or after the command; SUPPRESS keeps a subcommand's unset
    # option from overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--url", help=f"the server (env ETL_URL; default {DEFAULT_URL})")
    common.add_argument("--api-key", help="the API key (env ETL_API_KEY)")
    common.add_argument("--json", action="store_true", help="machine output: one JSON document per line")
    common.add_argument("--timeout", type=float, metavar="S",
                        help="give up after S seconds: retries of an unreachable server, and waiting (exit 4; "
                             "the task keeps running)")
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    run = add("run", "start a step; print its task id, or wait for its end")
    run.add_argument("step")
    run.add_argument("--param", "-p", action="append", metavar="K=V",
                     help="a parameter as text (repeatable); K:=JSON for a number, list or object")
    run.add_argument("--params-file", action="append", metavar="FILE", help="a JSON object of parameters (- = stdin)")
    run.add_argument("--wait", action="store_true", help="wait for the end; exit code by outcome")
    run.add_argument("--follow", "-f", action="store_true", help="wait and print the log lines as they come")
    run.add_argument("--idempotency-key", help="reuse to make a re-run of this command return the same task")
    wait = add("wait", "wait for a task to end; exit code by outcome")
    wait.add_argument("task_id")
    wait.add_argument("--follow", "-f", action="store_true", help="print the log lines as they come")
    add("status", "a task's state").add_argument("task_id")
    add("output", "a task's result (or error); exit code by outcome").add_argument("task_id")
    logs = add("logs", "a task's log lines")
    logs.add_argument("task_id")
    logs.add_argument("--since", type=int, default=0, metavar="N", help="skip the first N lines")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the task ends")
    stop = add("stop", "ask a task to stop")
    stop.add_argument("task_id")
    stop.add_argument("--wait", action="store_true", help="wait until it ended; exit code by outcome")
    tasks = add("tasks", "list tasks, newest first")
    tasks.add_argument("--status", choices=["queued", "running", "completed", "failed", "stopped"])
    tasks.add_argument("--step")
    tasks.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    add("steps", "the step catalogue, or one step's parameters").add_argument("step", nargs="?")
    add("health", "the health checks; exit 10 when failing")
    add("stats", "the service statistics")
    return parser


def _fail(out: Output, code: int, exc: Exception, **extra: Any) -> int:
    detail = str(exc)
    if out.json:
        out.data({"error": type(exc).__name__, "detail": detail, "exit_code": code, **extra})
    else:
        out.clear_bar()
        print(f"error: {detail}", file=sys.stderr)
        for field_error in extra.get("errors", []):
            print(f"  {field_error.get('field')}: {field_error.get('msg')}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A redirected stream on Windows is in the ANSI code page: a character it lacks must not
        # end the command with a traceback after the task ran.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    for name, default in (("url", None), ("api_key", None), ("json", False), ("timeout", None)):
        setattr(args, name, getattr(args, name, default))
    out = Output(args.json)
    url = args.url or os.environ.get("ETL_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("ETL_API_KEY") or None
    task_id = getattr(args, "task_id", None)
    try:
        with Client(url, api_key, retry_for=args.timeout or RETRY_FOR_SECONDS) as client:
            return COMMANDS[args.command](client, out, args)
    except Usage as exc:
        return _fail(out, EXIT_USAGE, exc)
    except errors.WaitTimeout as exc:
        if not out.json:
            print(exc.task_id)  # stdout: a script can wait again or stop it
        return _fail(out, EXIT_TIMEOUT, exc, task_id=exc.task_id, status=exc.status)
    except (errors.ServerUnreachable, errors.ServiceUnavailable) as exc:
        where = {k: v for k, v in (("task_id", getattr(exc, "task_id", None) or task_id),
                                   ("idempotency_key", getattr(exc, "idempotency_key", None))) if v}
        return _fail(out, EXIT_UNREACHABLE, exc, **where)
    except (errors.Unauthorized, errors.Forbidden) as exc:
        return _fail(out, EXIT_AUTH, exc)
    except errors.NotFound as exc:
        return _fail(out, EXIT_NOT_FOUND, exc)
    except errors.Conflict as exc:
        return _fail(out, EXIT_CONFLICT, exc, **{k: v for k, v in exc.body.items() if k != "detail"})
    except errors.TooManyRequests as exc:
        return _fail(out, EXIT_BUSY, exc)
    except (errors.InvalidParameters, errors.BadRequest, errors.PayloadTooLarge) as exc:
        return _fail(out, EXIT_USAGE, exc, errors=exc.body.get("errors", []))
    except errors.ApiError as exc:
        return _fail(out, EXIT_SERVER_ERROR, exc)
    except KeyboardInterrupt:
        out.clear_bar()
        print("interrupted; the task keeps running on the server", file=sys.stderr)
        return EXIT_INTERRUPTED
