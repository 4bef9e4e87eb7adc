"""ThreadResource: one resource per OS thread, dropped when its thread exits."""

from __future__ import annotations

import threading

from sync_primitives import ThreadResource
from tests.conftest import PROMPT, in_plain_thread


def test_one_resource_per_thread_created_lazily() -> None:
    made: list[int] = []

    def init() -> dict[str, int]:
        made.append(threading.get_ident())
        return {"thread": threading.get_ident()}

    resource = ThreadResource(init)
    mine = resource.get()
    assert resource.get() is mine
    theirs = in_plain_thread(resource.get).result(PROMPT)
    assert theirs is not mine and theirs["thread"] != mine["thread"]
    assert len(made) == 2


def test_resource_dies_with_its_thread_and_iteration_sees_live_threads() -> None:
    resource = ThreadResource(object)
    mine = resource.get()
    holding = threading.Event()
    may_exit = threading.Event()
    theirs: list[object] = []

    def body() -> None:
        theirs.append(resource.get())
        holding.set()
        may_exit.wait(PROMPT)

    thread = threading.Thread(target=body)
    thread.start()
    assert holding.wait(PROMPT)
    assert set(map(id, resource)) == {id(mine), id(theirs[0])}
    may_exit.set()
    thread.join(PROMPT)
    assert list(resource) == [mine]


def test_pop_removes_the_current_threads_resource() -> None:
    resource: ThreadResource[list[int]] = ThreadResource(list)
    first = resource.get()
    assert resource.pop() is first
    assert resource.pop() is None
    assert len(resource) == 0
    assert resource.get() is not first
