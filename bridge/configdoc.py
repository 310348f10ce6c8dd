"""docs/configuration.md, generated from the settings models so it cannot drift from them.

    python -m bridge.configdoc docs/configuration.md    # or: make docs

writes the file; a test checks the committed file equals this output. The field
descriptions in `bridge.config` are the text: change them there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bridge.config import describe_fields

HEADER = """\
# Configuration

The bridge reads one YAML file: `--config PATH`, else `$BRIDGE_CONFIG`, else
`config/bridge.yaml` (commented, with safe defaults; `config/bridge.example-production.yaml`
shows PostgreSQL and several replicas). Every key is also settable by environment variable,
`BRIDGE_<GROUP>__<KEY>`, and secrets may come from a directory of files
(`BRIDGE_SECRETS_DIR`, one file per key named like `rootly__api_token` or like its
environment variable, as a Kubernetes Secret mount provides; changed files are picked up
without a restart). Precedence: command-line flags > environment > secrets directory >
file. `BRIDGE_RULES_FILE` and `BRIDGE_ADMIN_TOKEN` work as short forms, and rule variables
are set with `BRIDGE_RULE_VAR_<NAME>` (e.g. `BRIDGE_RULE_VAR_ESCALATION_PATH_ID`).

Errors name their origin and stop the start with exit code 2:
`config/bridge.yaml:12: rootly.api_url: Input should be a valid URL`,
`env BRIDGE_SERVER__PORT: server.port: ...`. An enabled platform with a missing or
placeholder secret (`changeme`, `<token>`, ...) refuses to start, naming the key; an
unknown key is refused with the closest known one. Secrets are never logged.
`bridge check-config` validates a configuration and its rules without starting.

This page is generated from `bridge/config.py` (`make docs`).
"""


def render() -> str:
    """The whole page: the header, then one table per settings group."""
    lines = [HEADER.rstrip("\n")]
    group = None
    for key, env, default, meaning in describe_fields():
        name = key.split(".", 1)[0]
        if name != group:
            group = name
            lines += [f"## `{name}`", "", "| key | environment variable | default | meaning |"]
            lines.append("|---|---|---|---|")
        lines.append(f"| `{key}` | `{env}` | `{default}` | {meaning} |")
    out: list[str] = []
    for line in lines:
        if line.startswith("## ") and out and out[-1] != "":
            out.append("")
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bridge.configdoc docs/configuration.md", file=sys.stderr)  # noqa: T201
        return 2
    Path(argv[0]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
