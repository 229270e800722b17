"""The one ownership check: another user's object is answered as a missing one (404), never as forbidden.

Every route and channel that names an object by id (an app, function, call, sandbox, blob, dead letter,
Dict, Queue or Volume) checks it here, so a second user learns nothing, not even that the id exists
(tests/test_isolation.py tries every route with another user's token).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from minimodal.exception import NotFoundError


class _Owned(Protocol):
    user_id: Any  # an ORM column: an int once loaded


R = TypeVar("R", bound=_Owned)


def check_owner(owner_id: int | None, user_id: int, noun: str, object_id: object, *, admin: bool = False) -> None:
    """Raise NotFoundError (``no {noun} {object_id!r}``) unless ``user_id`` owns the object.

    Args:
        owner_id: the object's owner, None when no such object exists.
        admin: the user is an admin, who may reach every user's object (of a route that allows it).
    """
    if owner_id is None or (owner_id != user_id and not admin):
        raise NotFoundError(f"no {noun} {object_id!r}")


def owned(session: Any, model: type[R], object_id: object, user_id: int, noun: str, *, admin: bool = False) -> R:
    """The ``model`` record of ``object_id`` from ``session`` if ``user_id`` owns it, else NotFoundError.

    Example: ``app = owned(session, AppRecord, app_id, g.user.id, "app")``.
    """
    record = session.get(model, object_id)
    check_owner(record.user_id if record is not None else None, user_id, noun, object_id, admin=admin)
    return record
