"""The nexus-writer command line: what it says when something is missing."""

from __future__ import annotations

import pytest

from nexus_writer.cli import REDIS_URL_VARIABLE, build_parser, main
from nexus_writer.nexus.options import WriterOptions


@pytest.mark.parametrize("argv", [["run", "--session", "s"], ["simulate", "loopscan 2 0"]])
def test_a_command_without_redis_says_how_to_give_one(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(REDIS_URL_VARIABLE, raising=False)
    assert main(argv) == 2
    assert (
        f"nexus-writer {argv[0]}: give --redis URL, --embedded, or set ${REDIS_URL_VARIABLE}"
        in (capsys.readouterr().err)
    )


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://host/0", "the scheme must be redis://, rediss:// or unix://"),
        (
            "redis://127.0.0.1:1/0?socket_timeout=-1",
            "socket_timeout -1.0 is not a positive, finite number of seconds",
        ),
    ],
)
def test_a_bad_redis_url_is_named_without_a_traceback(
    url: str, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--redis", url, "--session", "s"]) == 2
    assert capsys.readouterr().err == f"nexus-writer run: Redis URL {url!r}: {what}\n"


def test_a_bad_option_value_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--embedded", "--image-shape", "48by64", "loopscan 2 0"])
    assert exit_info.value.code == 2
    assert "'48by64': expected ROWSxCOLUMNS" in capsys.readouterr().err


def test_limit_options_reach_the_writer_options() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--redis",
            "redis://x",
            "--session",
            "s",
            "--max-points",
            "7",
            "--max-channels",
            "3",
        ]
    )
    assert (args.max_points, args.max_channels) == (7, 3)
    assert args.max_point_bytes == WriterOptions.max_point_bytes
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--redis", "x", "--session", "s", "--max-points", "0"])


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("--lease-ttl", "nan", "must be at least 0.1 and at most 3600 seconds"),
        ("--lease-ttl", "0.05", "must be at least 0.1 and at most 3600 seconds"),
        ("--lease-ttl", "7200", "must be at least 0.1 and at most 3600 seconds"),
        ("--inactivity-timeout", "-1", "must be a finite number more than 0 seconds"),
        ("--inactivity-timeout", "0", "must be a finite number more than 0 seconds"),
        ("--inactivity-timeout", "nan", "must be a finite number more than 0 seconds"),
        ("--inactivity-timeout", "inf", "must be a finite number more than 0 seconds"),
        ("--inactivity-timeout", "soon", "expected a number of seconds"),
        ("--max-points", "many", "expected a whole number"),
    ],
)
def test_a_bad_time_or_limit_of_run_is_a_usage_error_naming_it(
    option: str, value: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before anything starts: a negative inactivity time-out would close every
    scan at once as inactive, a NaN one never; a bad lease ttl made a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--redis", "redis://127.0.0.1:1/0", "--session", "s", option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {value!r}: {why}" in err, err
    assert "Traceback" not in err


def test_the_bounds_of_run_times_are_accepted() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--redis",
            "x",
            "--session",
            "s",
            "--lease-ttl",
            "0.1",
            "--inactivity-timeout",
            "1e-3",
        ]
    )
    assert (args.lease_ttl, args.inactivity_timeout) == (0.1, 1e-3)
    args = build_parser().parse_args(
        ["run", "--redis", "x", "--session", "s", "--lease-ttl", "3600"]
    )
    assert args.lease_ttl == 3600
