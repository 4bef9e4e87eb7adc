"""A simulated beamline: motors, detectors, and scans published through the protocol.

.. important::
   A :class:`Beamline` runs one scan at a time in the calling thread or greenlet. It paces
   points with ``time.sleep`` (cooperative only under monkey-patching): run it in a thread
   of its own next to a gevent program that is not patched.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nexus_writer.protocol import (
    EndReason,
    Plot,
    Positioner,
    Role,
    ScanDocument,
    ScanPublisher,
    SessionPublisher,
)

from .detectors import FRAME_DATASET, DetectorFiles, Signals
from .scans import ScanPlan, parse_scan

_log = logging.getLogger(__name__)

DEFAULT_MOTORS = {"robx": 0.0, "roby": 0.0, "robz": 1.5, "samy": 0.0, "samz": 0.25}


@dataclass(frozen=True)
class Detectors:
    """Which detectors take part in every scan."""

    counters: int = 3  #: 0D counters: diode1 (float64), mon (int32), then ct3.. (float32)
    mca: bool = False  #: a 4096-channel MCA spectrum per point
    image: str = "none"  #: "none", "inline" (frames in Redis) or "file" (detector files)
    image_shape: tuple[int, int] = (48, 64)
    frames_per_file: int = 50

    def __post_init__(self) -> None:
        if self.image not in ("none", "inline", "file"):
            raise ValueError(f"image must be none, inline or file, not {self.image!r}")
        if self.counters < 1:
            raise ValueError("at least one counter")


@dataclass
class PublishedScan:
    """What the simulator published for one scan; ``values`` only with ``record=True``."""

    key: str
    document: ScanDocument
    npoints: int
    end_reason: EndReason
    values: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    detector_files: list[str] = field(default_factory=list)


class Beamline:
    """Publishes scans of one session."""

    def __init__(
        self,
        publisher: SessionPublisher,
        root: str,
        detectors: Detectors | None = None,
        batch: int | None = None,
        record: bool = False,
    ) -> None:
        """``root``: directory of the session's files. ``batch``: points per stream entry
        (default: what arrives in about 50 ms, at most 100). ``record``: keep every value
        published in :attr:`PublishedScan.values`, for comparisons."""
        self.publisher = publisher
        self.root = root
        self.detectors = detectors or Detectors()
        self.batch = batch
        self.record = record
        self.positions = dict(DEFAULT_MOTORS)

    def _new_directory(self, number: int) -> str:
        """A directory of its own for scan ``number``'s detector files: ``scanNNNN``, or
        ``scanNNNN_2``... when an earlier run of the session made one (as a detector would,
        never overwriting the frames that earlier scans' files refer to)."""
        base = os.path.join(self.root, self.publisher.session, f"scan{number:04d}")
        for occurrence in itertools.count(1):
            directory = base if occurrence == 1 else f"{base}_{occurrence}"
            try:
                os.makedirs(directory)
            except FileExistsError:
                continue
            return directory
        raise AssertionError("not reached")

    @property
    def session_file(self) -> str:
        """The NeXus file all scans of the session go to (one entry each)."""
        session = self.publisher.session
        return os.path.join(self.root, session, f"{session}.h5")

    def run(
        self,
        command: str,
        *,
        abort_after: int | None = None,
        fail_after: int | None = None,
        comments: tuple[str, ...] = (),
    ) -> PublishedScan:
        """Publish one scan; ``abort_after`` / ``fail_after`` end it early, after that many
        points, with USER_ABORT / FAILURE.

        Raises:
            ScanSyntaxError: ``command`` cannot be parsed.
        """
        plan = parse_scan(command, self.positions)
        before = dict(self.positions)
        stop_at = min(n for n in (plan.npoints, abort_after, fail_after) if n is not None)
        det = self.detectors
        scan = self.publisher.new_scan(
            name=plan.type,
            type=plan.type,
            title=plan.title,
            file=self.session_file,
            shape=plan.shape,
            channels=self._channels(plan),
            positioners={m: Positioner(v, "mm") for m, v in self.positions.items()},
            plots=self._plots(plan),
            user={"simulated": True, "count_time": plan.count_time},
        )
        number = scan.document.number
        files = None
        if det.image == "file":
            files = DetectorFiles(self._new_directory(number), "cam1", det.frames_per_file)
        scan.prepare()
        for text in comments:
            scan.comment(text)
        scan.start()
        try:
            recorded = self._count(scan, plan, Signals(seed=number), files, stop_at)
        finally:
            if files is not None:
                files.close()
        for motor, path in plan.motors.items():
            # A relative scan brings its motor back; an absolute one leaves it at the end.
            self.positions[motor] = (
                before[motor] if plan.type == "dscan" else float(path[stop_at - 1])
            )
        reason, message = EndReason.SUCCESS, None
        if stop_at < plan.npoints and stop_at == fail_after:
            reason, message = (
                EndReason.FAILURE,
                f"simulated detector failure after {stop_at} points",
            )
        elif stop_at < plan.npoints:
            reason, message = EndReason.USER_ABORT, f"stopped by the user after {stop_at} points"
        scan.stop()
        end = {m: Positioner(v, "mm") for m, v in self.positions.items()}
        scan.close(reason, message, positioners=end)
        _log.info("scan %d (%s): %d points, %s", number, plan.title, stop_at, reason.value)
        return PublishedScan(
            key=scan.key,
            document=scan.document,
            npoints=stop_at,
            end_reason=reason,
            values={k: np.concatenate(v) for k, v in recorded.items()},
            detector_files=list(files.files) if files else [],
        )

    def _count(
        self,
        scan: ScanPublisher,
        plan: ScanPlan,
        signals: Signals,
        files: DetectorFiles | None,
        npoints: int,
    ) -> dict[str, list[np.ndarray[Any, Any]]]:
        """Measure and publish ``npoints`` points in batches, paced by the count time."""
        recorded: dict[str, list[np.ndarray[Any, Any]]] = {}
        started = time.monotonic()
        batch = self.batch or _auto_batch(plan.count_time)
        for first in range(0, npoints, batch):
            last = min(first + batch, npoints)
            _pace(started + last * plan.count_time)
            for name, data in self._measure(plan, signals, first, last).items():
                if name == "cam1:image" and files is not None:
                    for ref in files.write(data):
                        scan.send_refs(name, ref.count, ref.file, FRAME_DATASET, ref.frame)
                else:
                    scan.send(name, data)
                if self.record:
                    recorded.setdefault(name, []).append(data)
        return recorded

    def _channels(self, plan: ScanPlan) -> list[dict[str, Any]]:
        det = self.detectors
        channels: list[dict[str, Any]] = [
            {"name": f"axis:{m}", "dtype": "<f8", "role": Role.POSITIONER, "unit": "mm"}
            for m in plan.motors
        ]
        channels.append(
            {"name": "timer:elapsed_time", "dtype": "<f8", "role": Role.COUNTER, "unit": "s"}
        )
        counters = [("diode1", "<f8"), ("mon", "<i4")]
        counters += [(f"ct{i}", "<f4") for i in range(3, det.counters + 1)]
        for name, dtype in counters[: det.counters]:
            channels.append({"name": f"simu:{name}", "dtype": dtype, "role": Role.COUNTER})
        if det.mca:
            channels.append(
                {
                    "name": "mca1:spectrum",
                    "dtype": "<u4",
                    "shape": [4096],
                    "role": Role.SPECTRUM,
                    "unit": "counts",
                }
            )
        if det.image != "none":
            role = Role.FRAME_REF if det.image == "file" else Role.IMAGE
            channels.append(
                {"name": "cam1:image", "dtype": "<u2", "shape": list(det.image_shape), "role": role}
            )
        return channels

    def _plots(self, plan: ScanPlan) -> list[Plot]:
        axes = tuple(f"axis:{m}" for m in plan.motors) or ("timer:elapsed_time",)
        plots = [Plot("simu:diode1", ("simu:diode1",), axes)]
        if self.detectors.mca:
            plots.append(Plot("mca1", ("mca1:spectrum",)))
        return plots

    def _measure(
        self, plan: ScanPlan, signals: Signals, first: int, last: int
    ) -> dict[str, np.ndarray[Any, Any]]:
        det = self.detectors
        motors = {m: path[first:last] for m, path in plan.motors.items()}
        elapsed = np.arange(first, last, dtype="<f8") * plan.count_time
        intensity = signals.intensity(motors, elapsed)
        values = {f"axis:{m}": p.astype("<f8") for m, p in motors.items()}
        values["timer:elapsed_time"] = elapsed
        values["simu:diode1"] = signals.counter(intensity, 1e4, "<f8")
        if det.counters >= 2:
            values["simu:mon"] = signals.counter(np.ones_like(intensity), 1e5, "<i4")
        for i in range(3, det.counters + 1):
            values[f"simu:ct{i}"] = signals.counter(intensity, 100.0 * i, "<f4")
        if det.mca:
            values["mca1:spectrum"] = signals.spectrum(intensity)
        if det.image != "none":
            values["cam1:image"] = signals.image(intensity, det.image_shape)
        return values


def _auto_batch(count_time: float) -> int:
    if count_time <= 0:
        return 100
    return max(1, min(100, int(0.05 / count_time)))


def _pace(deadline: float) -> None:
    """Wait until ``deadline``: the detectors are counting."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
