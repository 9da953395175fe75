"""Run one step without the server: ``python -m etl <step> --param value ...`` (``--list`` lists steps).

Values are read as JSON when they parse (numbers, true/false, lists, objects), else as text.
The result is printed as JSON; the exit status is 0 on success, 1 if the step failed, 2 on bad input.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from pydantic import ValidationError

from etl import registry, secrets
from etl.errors import EtlError


def _parse_params(args: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"expected --name value, got {arg!r}")
        name, sep, value = arg[2:].partition("=")
        if not sep:
            if index + 1 >= len(args) or args[index + 1].startswith("--"):
                value = "true"
            else:
                index += 1
                value = args[index]
        try:
            params[name.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[name.replace("-", "_")] = value
        index += 1
    return params


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--list":
        for step in registry.available(include_diagnostic=True).values():
            print(f"{step.name:32} {step.title}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        step = registry.get_step(argv[0], include_diagnostic=True)
        raw = _parse_params(argv[1:])
        misplaced = secrets.misplaced_references(raw, secrets.secret_paths(step.params_model))
        if misplaced:
            raise ValueError(f"--{'.'.join(misplaced[0])}: a ${{secret:...}} reference is allowed only in fields "
                             "declared to carry secrets")
        params = step.params_model.model_validate(raw)
    except (EtlError, ValueError) as exc:
        message = exc if not isinstance(exc, ValidationError) else "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"python -m etl: {message}", file=sys.stderr)
        return 2
    try:
        result = step.run(secrets.resolve_declared(params))
    except EtlError as exc:
        print(secrets.mask_text(f"python -m etl: step {step.name} failed: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1
    print(json.dumps(secrets.mask_values(result), ensure_ascii=False, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
