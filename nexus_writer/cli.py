"""The ``nexus-writer`` command: ``run`` (the writer service), ``simulate``, ``demo``,
``register`` and ``event-monitor`` (Tango's event system, server by server); and the
``NexusWriterService`` command's entry point, which checks for the ``tango`` extra first
(:mod:`nexus_writer.extras`).

.. important::
   Runs in the main thread of its own process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import gevent
import redis

from nexus_writer.extras import MissingExtraError, require
from nexus_writer.lease import DEFAULT_TTL, MAX_TTL, MIN_TTL
from nexus_writer.nexus.options import Compression, WriterOptions
from nexus_writer.protocol import DEFAULT_PREFIX, SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis, RedisServerError
from nexus_writer.service import WriterService
from nexus_writer.simulator import SCAN_TYPES, Beamline, Detectors, ScanSyntaxError
from nexus_writer.subscriber import Mode

REDIS_URL_VARIABLE = "NEXUS_WRITER_REDIS_URL"
#: The longest period between two event-monitor snapshots: a day.
MAX_PERIOD = 86400.0


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROWSxCOLUMNS, e.g. 48x64") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both sizes must be positive")
    return rows, cols


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _add_redis_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--redis",
        metavar="URL",
        help=f"redis://, rediss:// or unix:// URL (default: ${REDIS_URL_VARIABLE})",
    )
    where.add_argument(
        "--embedded",
        action="store_true",
        help="start a private redis-server for this run (stopped at the end)",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="key prefix (default: %(default)s)"
    )


#: The writer's limits on what a publisher can make it do: WriterOptions field, metavar,
#: what the option does.
LIMITS = [
    ("max_point_bytes", "BYTES", "a channel whose one point is larger is not written"),
    ("max_points", "N", "points at index N or beyond are not written"),
    ("max_channels", "N", "channels of a scan beyond the first N are not written"),
    ("max_metadata_items", "N", "user metadata with more items is stored as one JSON text"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus-writer",
        description="Saves the scans published in Redis as NeXus/HDF5 files "
        "(docs/operations.md); simulates a beamline; runs the demo; registers and "
        "watches Tango devices.",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info for run (the service says what it follows and writes), "
        "warning otherwise",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser(
        "simulate",
        help="publish realistic scans, as a beamline would",
        description="Publish scans of a simulated beamline through the Redis protocol. "
        f"Scan types: {', '.join(SCAN_TYPES)}; e.g. 'ascan robx 0 1 10 0.1', "
        "'amesh robx 0 1 4 roby 0 1 3 0.05', 'loopscan 20 0.01', 'timescan 0.01 50'.",
    )
    _add_redis_options(simulate)
    simulate.add_argument("--session", default="demo", help="session name (default: %(default)s)")
    simulate.add_argument(
        "--root",
        default=os.path.join(os.getcwd(), "data"),
        help="directory of the session's files (default: ./data)",
    )
    simulate.add_argument("--counters", type=_positive, default=3, help="0D counters per scan")
    simulate.add_argument("--mca", action="store_true", help="add a 4096-channel MCA")
    simulate.add_argument(
        "--image",
        choices=["none", "inline", "file"],
        default="none",
        help="a 2D detector, in Redis (inline) or in detector files (file)",
    )
    simulate.add_argument("--image-shape", type=_shape, default=(48, 64), metavar="ROWSxCOLS")
    simulate.add_argument("--frames-per-file", type=_positive, default=50)
    simulate.add_argument("--batch", type=_positive, help="points per stream entry")
    simulate.add_argument(
        "--abort-after",
        type=_positive,
        metavar="N",
        help="the user aborts each scan after N points",
    )
    simulate.add_argument(
        "--fail-after", type=_positive, metavar="N", help="each scan fails after N points"
    )
    simulate.add_argument(
        "--comment", action="append", default=[], help="a comment added to each scan (repeatable)"
    )
    simulate.add_argument("scans", nargs="+", metavar="SCAN", help="scan commands, each quoted")

    run = commands.add_parser(
        "run",
        help="write every scan of a session to NeXus files, until stopped (Ctrl-C, SIGTERM)",
        description="The writer service: follows a session in Redis and writes each new scan "
        "to the NeXus file its document names.",
    )
    _add_redis_options(run)
    run.add_argument("--session", required=True, help="the session to follow")
    run.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="files may only be written below DIR (repeatable; default: anywhere)",
    )
    run.add_argument(
        "--compression",
        choices=[c.value for c in Compression],
        default=Compression.BITSHUFFLE_LZ4.value,
        help="filter for array data (default: %(default)s; gzip needs no plugin)",
    )
    run.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.PARALLEL.value,
        help="how each scan's reading and writing are arranged",
    )
    run.add_argument(
        "--since",
        choices=["now", "all"],
        default="now",
        help="the first time a session is followed: scans announced from now on, or all "
        "still in Redis; afterwards the service goes on from where it stopped",
    )
    run.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="write PATH (JSON: session, role, position or holder, pid, time) once the "
        "service writes the session (role active) or stands by for the service that does "
        "(role standby): every scan announced after it appears is written; removed at stop",
    )
    run.add_argument(
        "--lease-ttl",
        type=_lease_ttl,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help="one service writes a session at a time, under a lease in Redis that lasts "
        "this long unless renewed: a standby service takes over within about this time "
        "after the active one dies (default: %(default)g)",
    )
    for field, metavar, what in LIMITS:
        run.add_argument(
            f"--{field.replace('_', '-')}",
            type=_positive,
            default=getattr(WriterOptions, field),
            metavar=metavar,
            help=f"{what} (default: %(default)s; docs/protocol.md, bad input)",
        )
    run.add_argument(
        "--inactivity-timeout",
        type=_inactivity,
        default=600.0,
        metavar="SECONDS",
        help="close a scan whose publisher has sent nothing for this long",
    )

    demo = commands.add_parser(
        "demo", help="embedded Redis + writer + simulator: write a few scans and show them"
    )
    demo.add_argument(
        "--root",
        default=os.path.join(os.getcwd(), "demo-data"),
        help="directory for the files (default: ./demo-data)",
    )
    monitor = commands.add_parser(
        "event-monitor",
        help="show what the Tango event system of each device's server does (docs/tango-events.md)",
    )
    monitor.add_argument("devices", nargs="+", metavar="DEVICE", help="Tango device names")
    monitor.add_argument(
        "--period",
        type=_period,
        default=10.0,
        metavar="SECONDS",
        help="seconds between two snapshots (default: 10)",
    )
    monitor.add_argument(
        "--monitor",
        action="store_true",
        help="turn on EnableEventSystemPerfMon meanwhile and print statistics tables "
        "(turned off again on exit, also on Ctrl-C)",
    )
    monitor.add_argument(
        "--jsonl", type=Path, metavar="FILE", help="append every snapshot to FILE as a JSON line"
    )
    monitor.add_argument(
        "--count", type=_positive, metavar="N", help="stop after N snapshots (default: never)"
    )
    register = commands.add_parser(
        "register",
        help="define a NexusWriter device in the Tango database at TANGO_HOST",
    )
    register.add_argument("--server", required=True, help="NexusWriterService instance name")
    register.add_argument("--session", required=True, help="the session the device writes")
    register.add_argument("--device", required=True, help="the device's name, e.g. id00/nexus/1")
    register.add_argument(
        "--property",
        action="append",
        default=[],
        type=_property,
        metavar="NAME=VALUE",
        help="a device property, e.g. redis_url=redis://host:6379/0 or roots=/data "
        "(a name given twice makes a list)",
    )
    return parser


def _property(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name.strip(), value


def _seconds(least: float, most: float, *, least_allowed: bool) -> Callable[[str], float]:
    """The ``type`` of an option in seconds: from ``least`` (itself allowed or not) to
    ``most`` (``inf``: any finite number); NaN and what is not a number are refused."""
    if most == math.inf:
        bounds = f"a finite number more than {least:g}"
    else:
        lower = "at least" if least_allowed else "more than"
        bounds = f"{lower} {least:g} and at most {most:g}"

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
        above = value >= least if least_allowed else value > least
        if not (above and value <= most and math.isfinite(value)):  # NaN fails `above`
            raise argparse.ArgumentTypeError(f"{text!r}: must be {bounds} seconds")
        return value

    return seconds


_period = _seconds(0, MAX_PERIOD, least_allowed=False)
_lease_ttl = _seconds(MIN_TTL, MAX_TTL, least_allowed=True)
_inactivity = _seconds(0, math.inf, least_allowed=False)


class UsageError(Exception):
    """The command line is incomplete; the message says what to add."""


@contextlib.contextmanager
def redis_for(args: argparse.Namespace) -> Iterator[redis.Redis]:
    """A client of --redis, of $NEXUS_WRITER_REDIS_URL, or of an embedded server for the
    command's duration (--embedded).

    Raises:
        UsageError: none of them was given, or the URL is not one (the message says why).
    """
    url = args.redis or os.environ.get(REDIS_URL_VARIABLE)
    if not url and not args.embedded:
        raise UsageError(f"give --redis URL, --embedded, or set ${REDIS_URL_VARIABLE}")
    server = EmbeddedRedis().start() if args.embedded else None
    try:
        if server is not None:
            print(f"embedded Redis at {server.url}", flush=True)
        try:
            client = connect(server.url if server else str(url))
        except ValueError as exc:  # the message names the URL and what is wrong
            raise UsageError(str(exc)) from None
        yield client
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace) -> int:
    with redis_for(args) as client:
        options = WriterOptions(
            roots=tuple(Path(r).resolve() for r in args.root),
            compression=Compression(args.compression),
            inactivity_timeout=args.inactivity_timeout,
            **{field: getattr(args, field) for field, _, _ in LIMITS},
        )
        service = WriterService(
            client,
            args.session,
            options,
            prefix=args.prefix,
            since="0-0" if args.since == "all" else "$",
            scan_mode=Mode(args.mode),
            lease_ttl=args.lease_ttl,
            ready_file=args.ready_file,
        )
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, service.stop)
        return service.run()  # in this greenlet of the main hub, until a signal


def simulate(args: argparse.Namespace) -> int:
    with redis_for(args) as client:
        detectors = Detectors(
            counters=args.counters,
            mca=args.mca,
            image=args.image,
            image_shape=args.image_shape,
            frames_per_file=args.frames_per_file,
        )
        beamline = Beamline(
            SessionPublisher(client, args.session, prefix=args.prefix),
            root=args.root,
            detectors=detectors,
            batch=args.batch,
        )
        failed = 0
        for command in args.scans:
            try:
                done = beamline.run(
                    command,
                    abort_after=args.abort_after,
                    fail_after=args.fail_after,
                    comments=tuple(args.comment),
                )
            except ScanSyntaxError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(
                f"scan {done.document.number} '{command}': {done.npoints} points, "
                f"{done.end_reason.value}, {done.key} -> {done.document.file}"
            )
        return 1 if failed else 0


def demo(args: argparse.Namespace) -> int:
    require("demo", "nexus-writer demo")
    from nexus_writer.demo import run_demo  # noqa: PLC0415 (needs the demo extra)

    return run_demo(Path(args.root))


def register_device(args: argparse.Namespace) -> int:
    """Define a NexusWriter device in the Tango database; 2 if the database refuses."""
    require("tango", "nexus-writer register")
    import tango  # noqa: PLC0415 (Tango is loaded for the Tango commands only)

    from nexus_writer.tango.server import SERVER, register  # noqa: PLC0415

    try:
        register(args.server, args.session, args.device, args.property)
    except tango.DevFailed as exc:
        first = exc.args[0]
        raise UsageError(f"the Tango database refused: {first.reason}: {first.desc}") from None
    print(f"{args.device}: NexusWriter of session {args.session} in {SERVER}/{args.server}")
    return 0


def monitor_events(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C
    try:  # Ctrl-C while Tango and rich load (for this command only) ends it too
        require("tango", "nexus-writer event-monitor")
        from nexus_writer.tango import event_monitor  # noqa: PLC0415
    except KeyboardInterrupt:
        return 0
    return event_monitor.main(
        args.devices, period=args.period, perf=args.monitor, jsonl=args.jsonl, count=args.count
    )


COMMANDS = {
    "simulate": simulate,
    "run": run,
    "demo": demo,
    "register": register_device,
    "event-monitor": monitor_events,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("info" if args.command == "run" else "warning")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)  # argparse accepts only these
    except UsageError as exc:
        print(f"nexus-writer {args.command}: {exc}", file=sys.stderr)
        return 2
    except MissingExtraError as exc:
        print(exc, file=sys.stderr)
        return 2
    except RedisServerError as exc:  # --embedded without a redis-server to run
        print(f"nexus-writer {args.command}: {exc}", file=sys.stderr)
        return 2


def service_main(argv: Sequence[str] | None = None) -> int:
    """``NexusWriterService``: the Tango device server of :mod:`nexus_writer.tango.server`,
    once the ``tango`` extra is known to be there (PyTango is not a core dependency)."""
    try:
        require("tango", "NexusWriterService")
    except MissingExtraError as exc:
        print(exc, file=sys.stderr)
        return 2
    from nexus_writer.tango.server import main as server_main  # noqa: PLC0415

    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
