"""The documented default config (etc/memwarden.toml), rendered from the schema so the two never drift."""

from __future__ import annotations

import json
import textwrap

from memwarden.config.schema import SECTIONS, section_fields

HEADER = """\
# memwarden configuration. Every key is shown commented out with its default: uncomment to change it.
# Sizes: "512MiB", "4GiB", "1.5GB" or a number of bytes (GiB/MiB are 2^30/2^20 bytes, GB/MB 10^9/10^6; a reserve
# written as a bare number must be at least 1 MiB). Durations: "250ms", "30s", "5m", "1h30m", "2d".
# Check a file with `memwardend --check-config --config FILE`; reload a running daemon with
# `systemctl reload memwarden` or `memwardenctl reload` (a bad file is refused and the old config kept).
"""


def toml_literal(value: object) -> str:
    if isinstance(value, dict) and not value:
        return "{}"
    if isinstance(value, dict):  # an inline table; a dotted key is quoted, or TOML would read it as nesting
        return "{ " + ", ".join(f"{k if k.replace('_', '').isalnum() else json.dumps(k)} = {toml_literal(v)}"
                                for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a TOML basic string is a JSON string for everything we write


def render_template() -> str:
    out = [HEADER]
    for name, section in SECTIONS.items():
        out.append(f"\n[{name}]\n")
        for f in section_fields(section):
            for line in textwrap.wrap(f.metadata["doc"], 106):
                out.append(f"# {line}\n")
            out.append(f"#{f.name} = {toml_literal(f.metadata['raw'])}\n\n")
        out[-1] = out[-1].rstrip("\n") + "\n"
    return "".join(out)
