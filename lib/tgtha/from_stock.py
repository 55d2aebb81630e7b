"""Rewrite a CIB made for the stock agents so that tgtha's agents run the same resources.

The administrator's procedure (README, "Moving from the stock agents"): under
maintenance-mode, the CIB is read, rewritten by this module, written back,
the resources are re-probed (now by tgtha's agents, which recognise what the
stock ones made) and maintenance-mode is cleared. Nothing restarts, because
every resource keeps its id, its place in groups and constraints, and every
parameter keeps its meaning. What changes:

- ocf:heartbeat:{portblock,iSCSITarget,iSCSILogicalUnit} -> ocf:tgtha:*;
  with ``ipaddr2``, also the ocf:heartbeat:IPaddr2 in a group with an
  iSCSITarget (the portal's address; an IPaddr2 elsewhere is someone else's);
- lsb:tgt (or systemd:tgt, service:tgt) -> ocf:tgtha:tgtd, which adopts the
  running tgtd;
- every iSCSILogicalUnit gets the identity the stock agent gave it, written
  down: tgtha's default identity is a function of the IQN and LUN, the stock
  one of the resource's name, and a LUN whose identity changes is another disk
  to multipath. The stock default scsi_id (the name's first 16 characters) is
  written as the hex digits tgt reads it as (tgtha takes hex only): the same
  NAA-6 designator, the WWID initiators and multipath use.

Only the standard library: this runs once, on an administrator's machine.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from .iscsilogicalunit import HEX_DIGITS, same_wwid_in_hex, stock_identity

TGT_AGENTS = ("portblock", "iSCSITarget", "iSCSILogicalUnit")
TGT_SERVICES = {("lsb", "tgt"), ("systemd", "tgt"), ("systemd", "tgt.service"), ("service", "tgt")}


class NotConvertible(Exception):
    """The CIB holds something tgtha cannot take over as it is."""


def convert(cib: ET.Element, ipaddr2: bool = False) -> list[str]:
    """Rewrite ``cib`` (a whole CIB or its configuration) in place; returns what
    was changed, one line each. NotConvertible: nothing was changed."""
    primitives = list(cib.iter("primitive"))
    refused = [f"{p.get('id')}: implementation={_param(p, 'implementation')}" for p in primitives
               if _is_stock(p, ("iSCSITarget", "iSCSILogicalUnit"))
               and (_param(p, "implementation") or "tgt") != "tgt"]
    if refused:
        raise NotConvertible("tgtha drives tgt only: " + "; ".join(refused))
    portal_addresses = _portal_addresses(cib) if ipaddr2 else set()
    changes = []
    for primitive in primitives:
        rid, kind = primitive.get("id"), primitive.get("type")
        if _is_stock(primitive, TGT_AGENTS) or rid in portal_addresses:
            primitive.set("provider", "tgtha")
            changes.append(f"{rid}: ocf:heartbeat:{kind} -> ocf:tgtha:{kind}")
            if kind == "iSCSILogicalUnit":
                changes += _pin_identity(primitive)
        elif (primitive.get("class"), kind) in TGT_SERVICES:
            changes.append(f"{rid}: {primitive.get('class')}:{kind} -> ocf:tgtha:tgtd")
            primitive.set("class", "ocf")
            primitive.set("provider", "tgtha")
            primitive.set("type", "tgtd")
    return changes


def _is_stock(primitive: ET.Element, kinds: tuple[str, ...]) -> bool:
    return (primitive.get("class"), primitive.get("provider")) == ("ocf", "heartbeat") \
        and primitive.get("type") in kinds


def _portal_addresses(cib: ET.Element) -> set[str]:
    """Ids of the stock IPaddr2 primitives that share a group with a stock iSCSITarget."""
    found = set()
    for group in cib.iter("group"):
        members = group.findall("primitive")
        if any(_is_stock(p, ("iSCSITarget",)) for p in members):
            found |= {p.get("id") for p in members if _is_stock(p, ("IPaddr2",))}
    return found


def _param(primitive: ET.Element, name: str) -> str | None:
    for attributes in primitive.findall("instance_attributes"):
        for pair in attributes.findall("nvpair"):
            if pair.get("name") == name:
                return pair.get("value")
    return None


def _set_param(primitive: ET.Element, name: str, value: str) -> None:
    for attributes in primitive.findall("instance_attributes"):
        for pair in attributes.findall("nvpair"):
            if pair.get("name") == name:
                pair.set("value", value)
                return
    attributes = primitive.find("instance_attributes")
    if attributes is None:
        attributes = ET.Element("instance_attributes", id=f"{primitive.get('id')}-instance_attributes")
        primitive.insert(0, attributes)
    ET.SubElement(attributes, "nvpair", id=f"{attributes.get('id')}-{name}", name=name, value=value)


def _pin_identity(primitive: ET.Element) -> list[str]:
    """Write down the scsi_id and scsi_sn the stock agent gave this LUN."""
    rid = primitive.get("id")
    default_id, default_sn = stock_identity(rid)
    changes = []
    configured = _param(primitive, "scsi_id")
    scsi_id = configured or default_id
    if configured is None or not all(c in HEX_DIGITS for c in scsi_id) or len(scsi_id) > 32:
        written = same_wwid_in_hex(scsi_id)
        _set_param(primitive, "scsi_id", written)
        changes.append(f"{rid}: scsi_id={written} (the stock agent's {scsi_id!r}: the same WWID)")
    if _param(primitive, "scsi_sn") is None:
        _set_param(primitive, "scsi_sn", default_sn)
        changes.append(f"{rid}: scsi_sn={default_sn} (the stock agent's default)")
    return changes


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="tgtha-from-stock",
        description="Rewrite a CIB file (cibadmin --query, pcs cluster cib) so that tgtha's agents run "
                    "the resources the stock agents run. Use under maintenance-mode; see README.")
    parser.add_argument("cib", help="the CIB file, rewritten in place")
    parser.add_argument("--ipaddr2", action="store_true",
                        help="also move each target group's ocf:heartbeat:IPaddr2 to ocf:tgtha:IPaddr2")
    args = parser.parse_args(argv)
    tree = ET.parse(args.cib)
    try:
        changes = convert(tree.getroot(), ipaddr2=args.ipaddr2)
    except NotConvertible as err:
        print(f"tgtha-from-stock: {err}; {args.cib} unchanged")
        return 2
    if not changes:
        print(f"tgtha-from-stock: no stock tgt resource in {args.cib}; unchanged")
        return 1
    tree.write(args.cib, encoding="unicode")
    print("\n".join(changes))
    return 0
