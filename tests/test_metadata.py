"""Every agent's metadata is real XML, valid for Pacemaker, and says what the code reads."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from conftest import AGENTS, OCF_ROOT, REPO

DTD = Path("/usr/share/resource-agents/ra-api-1.dtd")
RNG = Path("/usr/share/resource-agents/metadata.rng")
PCS_RNG = Path("/usr/share/pcs/data/ocf-1.0.rng")       # what pcs validates an agent's metadata with
PCS_RNG_1_1 = Path("/usr/share/pcs/data/ocf-1.1.rng")   # ... when it declares OCF 1.1
AGENT_NAMES = sorted(p.name for p in AGENTS.iterdir() if p.is_file())
# OCF 1.1 (reload-agent, reloadable parameters): ra-api-1.dtd and resource-agents'
# metadata.rng describe OCF 1.0 and know no "reloadable"; pcs's 1.1 schema does.
OCF_1_1 = sorted(n for n in AGENT_NAMES
                 if etree.parse(str(REPO / "metadata" / f"{n}.xml")).findtext("version") == "1.1")
OCF_1_0 = [n for n in AGENT_NAMES if n not in OCF_1_1]


def agent_module(name: str) -> str:
    """The library module an agent runs: its executable's ``from tgtha.X import main``."""
    line = next(line for line in (AGENTS / name).read_text().splitlines()
                if line.startswith("from tgtha.") and " import main" in line)
    return line.split()[1].removeprefix("tgtha.")


def agent_class(name: str):
    import importlib
    module = importlib.import_module(f"tgtha.{agent_module(name)}")
    return next(v for v in vars(module).values()
                if isinstance(v, type) and getattr(v, "NAME", None) == name)


def metadata(name: str) -> etree._ElementTree:
    return etree.parse(str(REPO / "metadata" / f"{name}.xml"))


@pytest.mark.parametrize("name", OCF_1_0)
def test_metadata_is_valid_against_the_dtd_and_the_relaxng_schema(name):
    tree = metadata(name)
    dtd = etree.DTD(str(DTD))
    assert dtd.validate(tree), dtd.error_log.filter_from_errors()
    rng = etree.RelaxNG(etree.parse(str(RNG)))
    assert rng.validate(tree), rng.error_log
    assert tree.getroot().get("name") == name


@pytest.mark.skipif(not PCS_RNG.exists(), reason="pcs not installed")
@pytest.mark.parametrize("name", AGENT_NAMES)
def test_metadata_is_valid_against_pcs_own_schema(name):
    rng = etree.RelaxNG(etree.parse(str(PCS_RNG_1_1 if name in OCF_1_1 else PCS_RNG)))
    assert rng.validate(metadata(name)), rng.error_log
    assert metadata(name).getroot().get("name") == name


def valid_against_its_doctype(text: bytes) -> bool:
    """What ocf-tester checks: xmllint --valid, the DTD named by the DOCTYPE (found
    beside resource-agents' ra-api-1.dtd), with any internal subset."""
    parser = etree.XMLParser(dtd_validation=True, load_dtd=True, no_network=True)
    try:
        etree.fromstring(text, parser, base_url=str(DTD.parent) + "/")
    except etree.XMLSyntaxError:
        return False
    return True


@pytest.mark.parametrize("name", OCF_1_1)
def test_ocf_1_1_metadata_is_valid_against_the_dtd_with_what_1_1_adds(name):
    text = (REPO / "metadata" / f"{name}.xml").read_bytes()
    assert valid_against_its_doctype(text)
    # The check's control: what neither 1.0 nor 1.1 has is still refused.
    assert not valid_against_its_doctype(text.replace(b'reloadable="1"', b'reloadable="1" hot="1"', 1))
    assert not valid_against_its_doctype(text.replace(b'name="reload-agent"', b'name="reload-now"', 1))


def test_the_ocf_1_1_agents_are_the_ones_with_reloadable_parameters():
    """Pacemaker 2.1 sends reload-agent only to an agent declaring OCF 1.1, and then
    only for a change of parameters marked reloadable (controld_metadata.c); a
    1.0 agent with reload gets it for any non-unique change."""
    assert OCF_1_1 == ["iSCSITarget"]
    for name in OCF_1_1:
        root = metadata(name).getroot()
        reloadable = {p.get("name") for p in root.iter("parameter") if p.get("reloadable") == "1"}
        assert reloadable == {"allowed_initiators", "additional_parameters"}
        assert "reload-agent" in {a.get("name") for a in root.iter("action")}


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_meta_data_action_prints_the_metadata_file_verbatim(name):
    out = subprocess.run([str(AGENTS / name), "meta-data"], capture_output=True, text=True,
                         env={"OCF_ROOT": OCF_ROOT}, check=True).stdout
    assert out == (REPO / "metadata" / f"{name}.xml").read_text()


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_declared_parameters_and_defaults_match_the_code(name):
    declared = {p.get("name"): p.find("content").get("default", "")
                for p in metadata(name).getroot().iter("parameter")}
    assert declared == agent_class(name).PARAMETERS


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_every_parameter_the_code_reads_is_declared(name):
    source = REPO / "lib" / "tgtha" / f"{agent_module(name)}.py"
    read = {node.args[0].value for node in ast.walk(ast.parse(source.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "param"
            and node.args and isinstance(node.args[0], ast.Constant)}
    declared = {p.get("name") for p in metadata(name).getroot().iter("parameter")}
    assert read, "the scan found no parameter reads: the test is broken"
    assert read <= declared, read - declared


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_every_advertised_action_is_implemented(name):
    advertised = {a.get("name") for a in metadata(name).getroot().iter("action")} - {"meta-data"}
    assert advertised <= set(agent_class(name).ACTIONS)


STOCK = Path("/usr/lib/ocf/resource.d/heartbeat")


@pytest.mark.parametrize("name", ["portblock", "iSCSITarget", "iSCSILogicalUnit", "IPaddr2"])
def test_every_parameter_of_the_stock_agent_is_declared_so_stock_configurations_move_over(name):
    """pcs refuses a parameter the metadata does not declare (without --force)."""
    if not (STOCK / name).exists():
        pytest.skip("resource-agents not installed")
    out = subprocess.run([str(STOCK / name), "meta-data"], capture_output=True, check=True,
                         env={"OCF_ROOT": OCF_ROOT, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout
    stock = {p.get("name") for p in etree.fromstring(out).iter("parameter")}
    ours = {p.get("name") for p in metadata(name).getroot().iter("parameter")}
    assert len(stock) > 3 and stock <= ours, stock - ours
