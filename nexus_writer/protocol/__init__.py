"""The scan-data protocol on plain Redis (docs/protocol.md): model, keys, publisher, reader.

.. important::
   Publishers and readers are used by one greenlet or thread at a time each; the model
   classes are frozen data. See each module for its thread and hub rules.
"""

from .encoding import FrameRef
from .errors import (
    DataLostError,
    GapError,
    LeaseLost,
    MalformedEntryError,
    ProtocolError,
    ScanNotFoundError,
    UnsupportedProtocolError,
)
from .keys import DEFAULT_PREFIX, Keys
from .model import (
    PROTOCOL_VERSION,
    Channel,
    EndReason,
    Plot,
    Positioner,
    Role,
    ScanDocument,
    ScanState,
)
from .publisher import ScanPublisher, SessionPublisher
from .reader import (
    ChannelEndEvent,
    CommentEvent,
    Cursor,
    ErrorEvent,
    FrameRefsEvent,
    PointsEvent,
    ScanAnnouncement,
    ScanEvent,
    ScanReader,
    SessionReader,
    StateEvent,
    load_document,
)

__all__ = [
    "DEFAULT_PREFIX",
    "PROTOCOL_VERSION",
    "Channel",
    "ChannelEndEvent",
    "CommentEvent",
    "Cursor",
    "DataLostError",
    "EndReason",
    "ErrorEvent",
    "FrameRef",
    "FrameRefsEvent",
    "GapError",
    "Keys",
    "LeaseLost",
    "MalformedEntryError",
    "Plot",
    "PointsEvent",
    "Positioner",
    "ProtocolError",
    "Role",
    "ScanAnnouncement",
    "ScanDocument",
    "ScanEvent",
    "ScanNotFoundError",
    "ScanPublisher",
    "ScanReader",
    "ScanState",
    "SessionPublisher",
    "SessionReader",
    "StateEvent",
    "UnsupportedProtocolError",
    "load_document",
]
