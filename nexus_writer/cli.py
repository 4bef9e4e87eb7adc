"""The ``nexus-writer`` command: ``nexus-writer simulate ...`` (more sub-commands follow).

.. important::
   Runs in the main thread of its own process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from nexus_writer.protocol import DEFAULT_PREFIX, SessionPublisher
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis
from nexus_writer.simulator import SCAN_TYPES, Beamline, Detectors, ScanSyntaxError

REDIS_URL_VARIABLE = "NEXUS_WRITER_REDIS_URL"


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROWSxCOLUMNS, e.g. 48x64") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both sizes must be positive")
    return rows, cols


def _positive(text: str) -> int:
    value = int(text)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus-writer", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
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
    return parser


def simulate(args: argparse.Namespace) -> int:
    url = args.redis or os.environ.get(REDIS_URL_VARIABLE)
    if not url and not args.embedded:
        print(
            f"nexus-writer simulate: give --redis URL, --embedded, or set ${REDIS_URL_VARIABLE}",
            file=sys.stderr,
        )
        return 2
    server = EmbeddedRedis().start() if args.embedded else None
    try:
        client = connect(server.url if server else str(url))
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
    finally:
        if server is not None:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "simulate":
        return simulate(args)
    raise AssertionError(args.command)  # argparse only accepts the sub-commands above


if __name__ == "__main__":
    sys.exit(main())
