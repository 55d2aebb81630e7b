"""OCF plumbing shared by every tgtha agent.

The exit codes and the exit-reason protocol are resource-agents' ``ocf.py``'s;
its module is not imported at run time: importing it costs 15-20 ms of CPU
(it sets up ``logging``), more than a whole stock monitor, and every start and
stop logs. Its log destinations and formats are reproduced below instead.

What ``ocf.py``'s own ``run()`` gets wrong for us, and this module does instead:
- it checks every required parameter before every action, so a stop can fail
  with rc 6; here each action reads only the parameters it needs;
- any exception becomes rc 1, even in a probe, often with no reason; here an
  unexpected exception is reported with a reason, and a probe on a node that
  lacks the software answers "not running";
- its metadata is built by string formatting; here it is a real XML file;
- it logs to stderr only on a tty; pacemaker-execd reads stderr, so we always do
  (info and above; debug with HA_debug);
- nothing stops a secret from reaching a log line or an exit reason; here every
  message passes through ``redact()``.
"""
from __future__ import annotations

import os
import sys
import time

# The OCF exit codes (the same numbers as ocf.py's OCF_* constants; a test
# keeps them equal).
SUCCESS = 0
ERR_GENERIC = 1
ERR_ARGS = 2
ERR_UNIMPLEMENTED = 3
ERR_PERM = 4
ERR_INSTALLED = 5
ERR_CONFIGURED = 6
NOT_RUNNING = 7
RUNNING_PROMOTED = 8
FAILED_PROMOTED = 9

DEFAULT_OP_TIMEOUT_S = 20.0


class OCFError(Exception):
    """Ends the current action with ``rc`` and ``reason`` as its exit reason."""

    def __init__(self, rc: int, reason: str) -> None:
        super().__init__(reason)
        self.rc = rc
        self.reason = reason


TRUE_WORDS = ("yes", "true", "1", "on", "y")
FALSE_WORDS = ("no", "false", "0", "off", "n", "")


def boolean(name: str, value: str) -> bool:
    """A boolean parameter as resource-agents' ocf_is_true reads it; anything else is 6."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise OCFError(ERR_CONFIGURED, f"{name}={value!r} is not a boolean (true/false)")


# ---------------------------------------------------------------- secrets

_secrets: list[str] = []


def register_secret(value: str) -> None:
    """Never let ``value`` reach a log line or an exit reason."""
    if value and value not in _secrets:
        _secrets.append(value)
        _secrets.sort(key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "********")
    return text


# ---------------------------------------------------------------- logging
#
# The destinations and formats are ocf.py's (stderr, which pacemaker-execd
# copies into its log; syslog when HA_LOGFACILITY is set; HA_LOGFILE and
# HA_DEBUGLOG; warnings and errors only, unless HA_debug), written here without
# the ``logging`` package: importing ocf.py costs 15-20 ms of CPU per action
# (it imports ``logging`` and builds handlers), which made every start and stop
# (they always log) twice the stock shell agent's time (measured: portblock
# start+stop 84 ms against 41). Nothing else from ocf.py is needed at run time.

_LEVELS = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3}   # syslog priorities


def _env(upper: str, lower: str) -> str:
    """Pacemaker passes the lower-case spellings; ocf.py reads the upper-case ones."""
    return os.environ.get(upper) or os.environ.get(lower) or ""


def _debugging() -> bool:
    return os.environ.get("HA_debug", "0") not in ("", "0")


def _log(level: str, msg: str) -> None:
    msg = redact(msg)
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "tgtha"
    instance = os.environ.get("OCF_RESOURCE_INSTANCE", "default")
    if level != "DEBUG" or _debugging():
        try:
            sys.stderr.write(f"{name}({instance})[{os.getpid()}]: {level}: {msg}\n")
            sys.stderr.flush()
        except OSError:
            pass
    if level in ("DEBUG", "INFO") and not _debugging():
        return
    if _env("HA_LOGFACILITY", "HA_logfacility"):
        import syslog  # noqa: PLC0415 - only when configured
        syslog.syslog(_LEVELS[level], f"{level}: {msg}".replace("\x00", "\n"))
    stamp = time.strftime(os.environ.get("HA_DATEFMT", "%b %d %T "))
    line = f"{name}({instance})[{os.getpid()}]:\t{stamp}{level}: {msg}\n"
    logfile, debuglog = _env("HA_LOGFILE", "HA_logfile"), _env("HA_DEBUGLOG", "HA_debugfile")
    for path in dict.fromkeys(p for p in (logfile, debuglog) if p):
        try:
            with open(path, "a", encoding="utf-8", errors="replace") as log:
                log.write(line)
        except OSError:
            pass  # a log that cannot be written must not change an action's outcome


def log_debug(msg: str) -> None:
    _log("DEBUG", msg)


def log_info(msg: str) -> None:
    _log("INFO", msg)


def log_warning(msg: str) -> None:
    _log("WARNING", msg)


def log_error(msg: str) -> None:
    _log("ERROR", msg)


def exit_reason(msg: str) -> None:
    """Report why the action failed: ocf.py's ``ocf_exit_reason`` protocol (a
    cookie line on stderr that pacemaker-execd turns into the exit reason),
    secrets removed, and the same text logged as an error."""
    cookie = os.environ.get("OCF_EXIT_REASON_PREFIX", "ocf-exit-reason:")
    try:
        sys.stderr.write(f"{cookie}{redact(msg)}\n")
        sys.stderr.flush()
    except OSError:
        pass
    log_error(msg)


# ---------------------------------------------------------------- the agent

def _metadata_path(agent_name: str) -> str:
    package_dir = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package_dir, "metadata", agent_name + ".xml")
    if os.path.exists(installed):
        return installed
    return os.path.join(package_dir, "..", "..", "metadata", agent_name + ".xml")


class Agent:
    """Base of every tgtha agent: parameters, the op's deadline, the action table.

    A subclass sets ``NAME`` (its metadata file), ``PARAMETERS`` (every
    parameter it reads, with its default; the metadata declares the same set,
    which a test checks) and defines one method per action; ``ACTIONS`` maps
    OCF action names to method names.
    """

    NAME = ""
    PARAMETERS: dict[str, str] = {}
    ACTIONS = {
        "start": "start",
        "stop": "stop",
        "monitor": "monitor",
        "status": "monitor",
        "validate-all": "validate_all",
    }

    def __init__(self, action: str, environ=None) -> None:
        self.action = action
        self.env = os.environ if environ is None else environ
        self.started_at = time.monotonic()

    def param(self, name: str) -> str:
        """The value of parameter ``name``, or its declared default."""
        if name not in self.PARAMETERS:
            raise KeyError(f"{self.NAME}: parameter {name!r} is not declared")
        value = self.env.get("OCF_RESKEY_" + name)
        return self.PARAMETERS[name] if value is None else value

    def meta(self, name: str, default: str = "") -> str:
        return self.env.get("OCF_RESKEY_CRM_meta_" + name, default)

    @property
    def resource_name(self) -> str:
        return self.env.get("OCF_RESOURCE_INSTANCE", self.NAME)

    @property
    def is_probe(self) -> bool:
        return self.action in ("monitor", "status") and self.meta("interval", "0") in ("", "0")

    @property
    def is_promotable(self) -> bool:
        if self.meta("promotable") == "true":
            return True
        master_max = self.meta("master_max")
        return master_max.isdigit() and int(master_max) > 0

    @property
    def timeout_s(self) -> float:
        timeout_ms = self.meta("timeout")
        return int(timeout_ms) / 1000.0 if timeout_ms.isdigit() else DEFAULT_OP_TIMEOUT_S

    @property
    def deadline(self) -> float:
        """Monotonic time by which the action must be done: the op timeout
        less a margin, so we fail with a reason instead of being killed."""
        margin = min(2.0, self.timeout_s * 0.1)
        return self.started_at + self.timeout_s - margin

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def usage(agent_cls: type[Agent]) -> str:
    return "usage: %s {%s}\n" % (agent_cls.NAME, "|".join(sorted({*agent_cls.ACTIONS, "meta-data"})))


def main(agent_cls: type[Agent], argv: list[str] | None = None) -> None:
    """Run the action named on the command line and exit with its OCF code."""
    argv = sys.argv if argv is None else argv
    action = argv[1] if len(argv) > 1 else os.environ.get("__OCF_ACTION", "")
    sys.exit(dispatch(agent_cls, action))


def dispatch(agent_cls: type[Agent], action: str) -> int:
    if action == "meta-data":
        with open(_metadata_path(agent_cls.NAME)) as xml:
            sys.stdout.write(xml.read())
        return SUCCESS
    if action in ("usage", "help", "-h", "--help"):
        sys.stdout.write(usage(agent_cls))
        return SUCCESS
    method_name = agent_cls.ACTIONS.get(action)
    if method_name is None:
        sys.stderr.write(usage(agent_cls))
        exit_reason(f"action {action!r} is not implemented")
        return ERR_UNIMPLEMENTED
    agent = agent_cls(action)
    try:
        return getattr(agent, method_name)()
    except OCFError as err:
        return _failed(agent, err)
    except Exception as err:  # noqa: BLE001 - the last line of defence: never fail without a reason
        import traceback
        log_error(traceback.format_exc())
        return _failed(agent, OCFError(ERR_GENERIC, f"unexpected error during {action}: "
                                                    f"{type(err).__name__}: {err}"))


def _failed(agent: Agent, err: OCFError) -> int:
    if agent.action == "stop" and err.rc in (ERR_CONFIGURED, ERR_INSTALLED):
        # Nothing can have been started with a configuration that does not
        # validate here; failing the stop would only get the node fenced.
        log_error(f"stop: {err.reason}; nothing to stop")
        return SUCCESS
    if agent.is_probe and err.rc == ERR_INSTALLED:
        log_info(f"probe: {err.reason}; not running here")
        return NOT_RUNNING
    exit_reason(err.reason)
    return err.rc
