#!/usr/bin/python3
"""A man page, ocf_tgtha_<agent>(7), from an agent's metadata: the one source
of what an agent does, so the page cannot drift from what `crm ra info` and
`pcs resource describe` show.

    metadata/to_man.py metadata/<agent>.xml [DATE] > ocf_tgtha_<agent>.7

(``make man`` makes them all in build/man; DATE defaults to SOURCE_DATE_EPOCH's.)

Build-time only (lxml); the agents never import it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lxml import etree


AGENTS = ("tgtd", "tgtuser", "portblock", "IPaddr2", "iSCSITarget", "iSCSILogicalUnit")


def roff(text: str) -> str:
    """Text safe in a roff line: backslashes escaped, minus signs marked, and no
    line that roff would read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def blocks(longdesc: str) -> list[tuple[str, str]]:
    """The metadata's plain text as ("paragraph" | "item", text): blank lines part
    paragraphs, "- " lines start list items (their continuation lines are indented)."""
    out: list[tuple[str, str]] = []
    for block in longdesc.strip("\n").split("\n\n"):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if not lines[0].startswith("- "):
            out.append(("paragraph", " ".join(lines)))
            continue
        for line in lines:
            if line.startswith("- "):
                out.append(("item", line[2:]))
            elif out:
                out[-1] = (out[-1][0], out[-1][1] + " " + line)
    return out


def description(longdesc: str) -> list[str]:
    out: list[str] = []
    for kind, text in blocks(longdesc):
        out += [".PP" if kind == "paragraph" else ".IP \\(bu 2", roff(text)]
    return out


def indented(longdesc: str) -> list[str]:
    """The same inside a .TP entry: one indented body, items marked with bullets."""
    out: list[str] = []
    for kind, text in blocks(longdesc):
        if out:
            out.append(".sp" if kind == "paragraph" else ".br")
        out.append(roff(text) if kind == "paragraph" else "\\(bu " + roff(text))
    return out


def man_page(metadata: Path, date: str) -> str:
    agent = etree.parse(str(metadata)).getroot()
    name = agent.get("name")
    page = f"ocf_tgtha_{name}"
    out = [f'.TH {page.upper()} 7 "{date}" "tgtha" "OCF resource agents"', ".nh", ".ad l",
           ".SH NAME", f"{roff(page)} \\- {roff(agent.findtext('shortdesc', '').strip())}",
           ".SH SYNOPSIS",
           f".B crm configure primitive\n.I id\n.B ocf:tgtha:{name}\n.RB [ params\n.IR name = value ...]",
           ".br",
           f".B pcs resource create\n.I id\n.B ocf:tgtha:{name}\n.RI [ name = value ...]",
           ".SH DESCRIPTION", *description(agent.findtext("longdesc", ""))]
    out.append(".SH SUPPORTED PARAMETERS")
    for parameter in agent.iter("parameter"):
        content = parameter.find("content")
        facts = [content.get("type", "string")] if content is not None else []
        if content is not None and content.get("default", "") != "":
            facts.append(f"default {content.get('default')}")
        if parameter.get("required") == "1":
            facts.append("required")
        if parameter.get("unique") == "1":
            facts.append("unique")
        if parameter.get("reloadable") == "1":
            facts.append("reloadable: a change is applied without a restart")
        out += [".TP", f".B {roff(parameter.get('name'))}",
                roff(f"{parameter.findtext('shortdesc', '').strip()} ({', '.join(facts)})"), ".br",
                *indented(parameter.findtext("longdesc", ""))]
    out.append(".SH SUPPORTED ACTIONS")
    out.append(".nf")
    for action in agent.iter("action"):
        details = [f"{key}={action.get(key)}" for key in ("timeout", "interval", "depth", "role")
                   if action.get(key)]
        out.append(roff(f"{action.get('name'):<14}{' '.join(details)}"))
    out.append(".fi")
    others = [f"ocf_tgtha_{n}" for n in AGENTS if n != name]
    out += [".SH SEE ALSO", ".BR crm (8),", ".BR pcs (8),",
            *[f".BR {other} (7)" + ("," if other != others[-1] else "") for other in others]]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    # SOURCE_DATE_EPOCH (set by dpkg-buildpackage from debian/changelog): reproducible pages.
    epoch = float(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    date = argv[2] if len(argv) > 2 else time.strftime("%Y-%m-%d", time.gmtime(epoch))
    sys.stdout.write(man_page(Path(argv[1]), date))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
