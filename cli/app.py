"""The entry wrapper of every script: flag parsing, exit codes, one-line errors.

Exit codes: 0 done (and ``--help``), 2 usage error (a bad flag, flags that contradict each
other or the checkpoint), 1 data error (a missing, unreadable or corrupt file: the line names
it), 130 interrupted. An exception may carry its own ``exit_code`` attribute (the engine's
``UsageError``/``DataError``, ``nets.configure.SettingsError``). The traceback is shown only
with ``--verbosity=1`` (debug) or higher.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags

from tf_extended.errors import describe_error

USAGE_ERROR = 2
DATA_ERROR = 1
INTERRUPTED = 130
_HELP_FLAGS = ("--help", "-h", "-?", "--helpfull", "--helpshort", "--helpxml")


class UsageError(Exception):
    """A flag value that cannot work (exit code 2); the message names the flag."""

    exit_code = USAGE_ERROR


def program_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "script"


def report_error(message: str) -> None:
    """Print ``<script>: error: <message>`` on stderr (the format of every script's errors)."""
    sys.stderr.write(f"{program_name()}: error: {message}\n")
    sys.stderr.flush()


def fail(message: str, code: int = DATA_ERROR) -> NoReturn:
    """:func:`report_error`, then exit ``code``."""
    report_error(message)
    sys.exit(code)


def describe(err: BaseException) -> str:
    """One readable message for an exception: TensorFlow's wrappings dropped, else str()."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])
    return describe_error(err)


def exit_code_for(err: BaseException) -> int:
    """The exit code of a failure: its ``exit_code`` attribute, else a data error."""
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code
    return DATA_ERROR


def _parse(argv: Sequence[str], allow_positional: bool) -> list[str]:
    try:
        rest = flags.FLAGS(list(argv))
    except SystemExit as done:  # absl prints --help itself, then exits with 1.
        if any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise done
    except flags.Error as err:
        fail(f"{err} (usage error; see --help)", USAGE_ERROR)
    if not allow_positional and len(rest) > 1:
        fail(f"unexpected arguments {rest[1:]} (flags are --name=value; see --help)", USAGE_ERROR)
    return rest


def run(main: Callable[[list[str]], Optional[int]], *, allow_positional: bool = False) -> NoReturn:
    """Parse the flags and run ``main(argv)``; its return value is the exit code (None: 0).

    Args:
      main: the script's body; ``argv`` holds the program name and any positional arguments.
      allow_positional: accept arguments that are not flags (e.g. detect.py's image paths);
        otherwise they are a usage error.
    """
    def body(argv: list[str]) -> None:
        try:
            code = main(argv)
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)
        except app.UsageError as err:
            fail(str(err), USAGE_ERROR)
        except Exception as err:  # One clear line, no traceback (unless debugging).
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                logging.exception("%s failed", program_name())
            fail(describe(err), exit_code_for(err))
        sys.exit(int(code or 0))

    app.run(body, flags_parser=lambda argv: _parse(argv, allow_positional))
    raise AssertionError("unreachable")  # app.run exits
