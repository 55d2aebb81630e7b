"""The OCF runtime: codes, failure policy, secrets, logging."""
from __future__ import annotations

import sys

import pytest

from tgtha import ocf_runtime as ocf
from tgtha.ocf_runtime import OCFError


def test_exit_codes_are_those_of_resource_agents_ocf_py():
    sys.path.append("/usr/lib/ocf/lib/heartbeat")
    import ocf as stock
    for name in ("SUCCESS", "ERR_GENERIC", "ERR_ARGS", "ERR_UNIMPLEMENTED", "ERR_PERM",
                 "ERR_INSTALLED", "ERR_CONFIGURED", "NOT_RUNNING"):
        assert getattr(ocf, name) == getattr(stock, "OCF_" + name)
    assert ocf.RUNNING_PROMOTED == stock.OCF_RUNNING_MASTER
    assert ocf.FAILED_PROMOTED == stock.OCF_FAILED_MASTER


class Sample(ocf.Agent):
    NAME = "sample"
    PARAMETERS = {"needed": "", "secret": ""}

    def start(self):
        ocf.register_secret(self.param("secret"))
        raise OCFError(ocf.ERR_GENERIC, f"cannot use {self.param('secret')}")

    def stop(self):
        if not self.param("needed"):
            raise OCFError(ocf.ERR_CONFIGURED, "needed is not set")
        return ocf.SUCCESS

    def monitor(self):
        if self.param("needed") == "missing-binary":
            raise OCFError(ocf.ERR_INSTALLED, "frobnicate not found")
        raise ZeroDivisionError("boom")


@pytest.fixture
def env(monkeypatch):
    for key in ("OCF_RESKEY_needed", "OCF_RESKEY_secret", "OCF_RESKEY_CRM_meta_interval"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_stop_with_a_configuration_that_does_not_validate_succeeds(env):
    assert ocf.dispatch(Sample, "stop") == ocf.SUCCESS


def test_probe_on_a_node_without_the_software_is_not_running(env, capsys):
    env.setenv("OCF_RESKEY_needed", "missing-binary")
    env.setenv("OCF_RESKEY_CRM_meta_interval", "0")
    assert ocf.dispatch(Sample, "monitor") == ocf.NOT_RUNNING


def test_recurring_monitor_without_the_software_is_err_installed(env, capsys):
    env.setenv("OCF_RESKEY_needed", "missing-binary")
    env.setenv("OCF_RESKEY_CRM_meta_interval", "10000")
    assert ocf.dispatch(Sample, "monitor") == ocf.ERR_INSTALLED
    assert "ocf-exit-reason:frobnicate not found" in capsys.readouterr().err


def test_an_unexpected_exception_in_a_probe_fails_with_a_reason(env, capsys):
    env.setenv("OCF_RESKEY_needed", "x")
    assert ocf.dispatch(Sample, "monitor") == ocf.ERR_GENERIC
    err = capsys.readouterr().err
    assert "ocf-exit-reason:unexpected error during monitor: ZeroDivisionError: boom" in err


def test_secrets_never_reach_exit_reasons_or_logs(env, capsys):
    env.setenv("OCF_RESKEY_secret", "s3cr3t-pw")
    assert ocf.dispatch(Sample, "start") == ocf.ERR_GENERIC
    err = capsys.readouterr().err
    assert "s3cr3t-pw" not in err
    assert "ocf-exit-reason:cannot use ********" in err


def test_unknown_action_is_unimplemented(env, capsys):
    assert ocf.dispatch(Sample, "frobnicate") == ocf.ERR_UNIMPLEMENTED


def test_reading_an_undeclared_parameter_is_a_bug():
    with pytest.raises(KeyError):
        Sample("start", environ={}).param("undeclared")
