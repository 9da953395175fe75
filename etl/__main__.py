"""Run one step without the server: ``python -m etl <step> --param value ...`` (``--list`` lists steps,
``python -m etl <step> --help`` prints a step's parameters with their types and defaults).

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
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        # --read.decimal . sets one field of an object parameter
        *parents, leaf = name.replace("-", "_").split(".")
        target = params
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"--{name}: {parent} is already given as a value")
        target[leaf] = parsed
        index += 1
    return params


def _type_text(schema: dict[str, Any], definitions: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type_text(s, definitions) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_text(schema.get('items', {}), definitions)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type_text(schema['additionalProperties'], definitions)}"
    return str(kind)


def _parameter_lines(schema: dict[str, Any], definitions: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    required = set(schema.get("required", []))
    for name, field in schema.get("properties", {}).items():
        default = "required" if name in required else (
            f"default {json.dumps(field['default'], ensure_ascii=False)}" if "default" in field else "optional")
        lines.append(f"  --{prefix}{name}  ({_type_text(field, definitions)}; {default})")
        if field.get("description"):
            lines.append(f"        {field['description']}")
        ref = field.get("$ref") or next((s.get("$ref") for s in field.get("anyOf", []) if "$ref" in s), None)
        if ref and prefix == "":
            nested = definitions.get(ref.rsplit("/", 1)[-1], {})
            if nested.get("properties"):
                lines.append(f"        (an object; its fields, given as --{name} '{{...}}' JSON:)")
                lines += ["    " + line for line in _parameter_lines(nested, definitions, f"{name}.")]
    return lines


def describe(step: registry.Step) -> str:
    """A step's help: its description and each parameter with its type and default."""
    schema = step.parameters_schema()
    definitions = schema.get("$defs", {})
    lines = [f"python -m etl {step.name} [--name value ...]", "", f"{step.title}: {step.description}", "",
             "Parameters (values are JSON when they parse, else text):"]
    lines += _parameter_lines(schema, definitions) or ["  (none)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--list":
        for step in registry.available(include_diagnostic=True).values():
            print(f"{step.name:32} {step.title}")
        return 0
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        try:
            print(describe(registry.get_step(argv[0], include_diagnostic=True)))
        except EtlError as exc:
            print(f"python -m etl: {exc}", file=sys.stderr)
            return 2
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
