"""``NexusWriterService servername``: the device server of NexusWriter devices, and
``nexus-writer register``, which defines one in a Tango database.

.. important::
   :func:`main` runs in the main thread of its own process, which runs the server's gevent
   hub (green mode) until the server is stopped (SIGINT, SIGTERM, or the admin device's
   ``Kill`` command).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import traceback
from collections.abc import Sequence

import tango
from tango.server import run

from nexus_writer.tango.exit_watchdog import EXIT_GRACE, WATCHDOG
from nexus_writer.tango.nexus_writer_device import NexusWriter

_log = logging.getLogger(__name__)

#: The Tango server name: the executable of every NexusWriter server.
SERVER = "NexusWriterService"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server instance named on the command line; Tango options (``-v4``,
    ``-ORBendPoint ...``) follow it, as for any device server."""
    parser = argparse.ArgumentParser(
        prog=SERVER,
        description="The Tango device server of NexusWriter devices (docs/operations.md).",
    )
    parser.add_argument("instance", help="the server's instance name, as in the database")
    parser.add_argument("--log", default="info", metavar="LEVEL", help="default: info")
    parser.add_argument("--logfile", metavar="PATH", help="log to this file (default: stderr)")
    parser.add_argument(
        "--exit-grace",
        type=_seconds,
        default=EXIT_GRACE,
        metavar="SECONDS",
        help="once its devices have stopped, exit anyway if the followed attributes' Tango "
        f"calls, then Tango's cleanup, take longer than this, each (default: {EXIT_GRACE:g})",
    )
    args, tango_args = parser.parse_known_args(argv)
    WATCHDOG.grace = args.exit_grace
    logging.basicConfig(
        level=args.log.upper(),
        filename=args.logfile,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(
            (NexusWriter,),
            args=[SERVER, args.instance, *tango_args],
            green_mode=tango.GreenMode.Gevent,
            raises=True,  # PyTango would print any failure and exit 0: we exit 1
        )
    except KeyboardInterrupt:
        _log.info("%s %s: interrupted", SERVER, args.instance)
    except tango.DevFailed as exc:
        _log.error("%s %s: %s", SERVER, args.instance, exc.args[0].desc.strip())
        return 1
    except Exception as exc:
        if not _failed_cleanup_after_stop(exc):
            _log.exception("%s %s: stopped by an unexpected error", SERVER, args.instance)
            return 1
    _log.info("%s %s: stopped", SERVER, args.instance)
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _failed_cleanup_after_stop(exc: Exception) -> bool:
    """Whether ``exc`` is what PyTango's gevent server loop raises after a clean stop.

    A green-mode server stopped by SIGTERM, SIGINT or the admin device's Kill has run its
    devices' delete_device and left its request loop; the ORB cleanup that follows then
    raises ``RuntimeError: Caught an unknown exception!`` (any gevent device server, with
    PyTango 10; a synchronous one does not), which PyTango would print as "Server exited
    with unforseen exception". Only that failure, in that call, is taken as a clean stop."""
    frames = traceback.extract_tb(exc.__traceback__)
    return (
        isinstance(exc, RuntimeError)
        and bool(frames)
        and "server_cleanup" in (frames[-1].line or "")
    )


def register(server: str, session: str, device: str, properties: Sequence[tuple[str, str]]) -> None:
    """Define ``device`` as a NexusWriter of ``session`` in instance ``server`` of
    NexusWriterService, in the database at ``TANGO_HOST``; ``properties``: more device
    properties as (name, value) pairs (a name given twice makes a list, for ``roots``).

    Raises:
        tango.DevFailed: the database refused (the message says why).
    """
    info = tango.DbDevInfo()
    info.name, info._class, info.server = device, NexusWriter.__name__, f"{SERVER}/{server}"
    values: dict[str, list[str]] = {}
    for name, value in properties:
        values.setdefault(name, []).append(value)
    values["session"] = [session]
    database = tango.Database()
    database.add_device(info)
    database.put_device_property(device, values)


if __name__ == "__main__":
    sys.exit(main())
