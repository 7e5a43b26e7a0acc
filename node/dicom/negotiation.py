"""Association negotiation from memory: what pynetdicom works out afresh for every association.

A scanner or a DCMTK storescu proposes the same presentation contexts on every association
(storescu: 120-odd, each with up to three transfer syntaxes), and pynetdicom turns them into
objects, checks every UID, matches them against the node's 171 contexts and encodes the
answer, item by item, under the interpreter lock that the associations already sending
need too. `negotiate_from_memory()` makes pynetdicom remember, per receiving process (CPU
per single-slice storescu association went from 19-23.5 ms to 11.7-13.3 ms;
tests/benchmarks/bench_associations.py):

- which UIDs it found valid (`set_uid`, `validate_uid` in its association modules) and
  which transfer syntaxes it would add to a context without a warning;
- the decoded Presentation Context (RQ) items, by their bytes;
- the outcome of negotiating a proposal against the acceptor's contexts: the same proposal
  (context IDs, abstract and transfer syntaxes, role selections) against the same supported
  contexts gets copies of the contexts and role items worked out the first time;
- the encoded Presentation Context (AC) items of its answers.

Results are the ones pynetdicom gives (tests compare them); anything unusual (bytes values,
UIDs it warns about, failures) takes pynetdicom's own path every time.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import OrderedDict
from typing import Any

from pydicom.uid import UID
from pynetdicom import _config, acse, pdu_items, pdu_primitives, presentation, utils
from pynetdicom.pdu_items import (
    PresentationContextItemAC,
    PresentationContextItemRQ,
    TransferSyntaxSubItem,
)
from pynetdicom.presentation import PresentationContext

_set_uid, _validate_uid = utils.set_uid, utils.validate_uid
_negotiate = presentation.negotiate_as_acceptor
_add_transfer_syntax = PresentationContext.add_transfer_syntax
_rq_item_decode = PresentationContextItemRQ.decode
_ac_item_from_primitive = PresentationContextItemAC.from_primitive
_ac_item_encode = PresentationContextItemAC.encode


# --------------------------------------------------------------------------- UIDs


@functools.lru_cache(maxsize=1024)
def _checked_uid(value: str | bytes, name: str, allow_empty: bool, allow_none: bool,
                 validate: bool, _conformance: bool) -> UID | None:
    return _set_uid(value, name, allow_empty, allow_none, validate)


def _set_uid_once(value: None | str | bytes | UID, name: str, allow_empty: bool = True,
                  allow_none: bool = True, validate: bool = True) -> UID | None:
    if isinstance(value, (str, bytes)):
        return _checked_uid(value, name, allow_empty, allow_none, validate,
                            _config.ENFORCE_UID_CONFORMANCE)
    return _set_uid(value, name, allow_empty, allow_none, validate)


@functools.lru_cache(maxsize=1024)
def _uid_valid(uid: UID, _conformance: bool) -> bool:
    return _validate_uid(uid)


def _validate_uid_once(uid: UID) -> bool:
    return _uid_valid(uid, _config.ENFORCE_UID_CONFORMANCE)


@functools.lru_cache(maxsize=1024)
def _plain_syntax(syntax: str, _conformance: bool) -> UID | None:
    """`syntax` as a UID when add_transfer_syntax takes it without a word, else None."""
    uid = UID(syntax)
    if uid and _validate_uid(uid) and uid.is_valid and (uid.is_private or uid.is_transfer_syntax):
        return uid
    return None


def _add_transfer_syntax_once(self: PresentationContext, syntax: Any) -> None:
    if isinstance(syntax, str):
        uid = _plain_syntax(syntax, _config.ENFORCE_UID_CONFORMANCE)
        if uid is not None:
            if uid not in self._transfer_syntax:
                self._transfer_syntax.append(uid)
            return
    _add_transfer_syntax(self, syntax)


# --------------------------------------------------------------------------- the proposal


@functools.lru_cache(maxsize=4096)
def _rq_item_fields(item: bytes) -> tuple[int | None, tuple[Any, ...]]:
    decoded = PresentationContextItemRQ()
    _rq_item_decode(decoded, item)
    return decoded.presentation_context_id, tuple(decoded.abstract_transfer_syntax_sub_items)


def _rq_item_decode_once(self: PresentationContextItemRQ, bytestream: bytes) -> None:
    # The sub-items are read-only once decoded: made into primitives and described.
    context_id, subs = _rq_item_fields(bytes(bytestream))
    self.presentation_context_id = context_id
    self.abstract_transfer_syntax_sub_items = list(subs)


# --------------------------------------------------------------------------- outcomes


class _Outcomes:
    """The last few negotiation outcomes, by proposal and supported contexts."""

    SIZE = 64

    def __init__(self) -> None:
        self._outcomes: OrderedDict[Any, tuple[list[PresentationContext], list[Any]]] = (
            OrderedDict())
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[list[PresentationContext], list[Any]] | None:
        with self._lock:
            found = self._outcomes.get(key)
            if found is not None:
                self._outcomes.move_to_end(key)
            return found

    def put(self, key: Any, outcome: tuple[list[PresentationContext], list[Any]]) -> None:
        with self._lock:
            self._outcomes[key] = outcome
            while len(self._outcomes) > self.SIZE:
                self._outcomes.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._outcomes.clear()


_outcomes = _Outcomes()


def _context_copy(context: PresentationContext) -> PresentationContext:
    twin = PresentationContext.__new__(PresentationContext)
    twin.__dict__.update(context.__dict__)
    twin._transfer_syntax = list(context._transfer_syntax)
    return twin


def _negotiate_once(rq_contexts: list[PresentationContext],
                    ac_contexts: list[PresentationContext],
                    roles: dict[Any, tuple[Any, Any]] | None = None
                    ) -> tuple[list[PresentationContext], list[Any]]:
    key = (
        tuple((cx._context_id, cx._abstract_syntax, tuple(cx._transfer_syntax))
              for cx in rq_contexts),
        tuple((cx._abstract_syntax, tuple(cx._transfer_syntax), cx._scu_role, cx._scp_role)
              for cx in ac_contexts),
        tuple(sorted((roles or {}).items())),
    )
    outcome = _outcomes.get(key)
    if outcome is None:
        result, reply_roles = _negotiate(rq_contexts, ac_contexts, roles)
        outcome = ([_context_copy(cx) for cx in result], [copy.copy(r) for r in reply_roles])
        _outcomes.put(key, outcome)
    result, reply_roles = outcome
    return [_context_copy(cx) for cx in result], [copy.copy(r) for r in reply_roles]


# --------------------------------------------------------------------------- the answer


@functools.lru_cache(maxsize=256)
def _syntax_sub_item(syntax: UID) -> TransferSyntaxSubItem:
    item = TransferSyntaxSubItem()
    item.transfer_syntax_name = syntax
    return item


def _ac_item_from_primitive_once(self: PresentationContextItemAC,
                                 primitive: PresentationContext) -> None:
    self.presentation_context_id = primitive.context_id
    self.result_reason = primitive.result
    # Read-only once made: encoded and described, never changed.
    self.transfer_syntax_sub_item = [_syntax_sub_item(primitive.transfer_syntax[0])]


@functools.lru_cache(maxsize=4096)
def _ac_item_bytes(context_id: int, result: int, syntax: UID) -> bytes:
    item = PresentationContextItemAC()
    item.presentation_context_id = context_id
    item.result_reason = result
    item.transfer_syntax_sub_item = [_syntax_sub_item(syntax)]
    return _ac_item_encode(item)


def _ac_item_encode_once(self: PresentationContextItemAC) -> bytes:
    subs = self.transfer_syntax_sub_item
    if (len(subs) == 1 and isinstance(self.presentation_context_id, int)
            and isinstance(self.result_reason, int)
            and isinstance(subs[0].transfer_syntax_name, UID)):
        return _ac_item_bytes(self.presentation_context_id, self.result_reason,
                              subs[0].transfer_syntax_name)
    return _ac_item_encode(self)


def negotiate_from_memory() -> None:
    """Install the memories above in pynetdicom (idempotent; for receiving processes)."""
    for module in (pdu_items, pdu_primitives, presentation):
        module.set_uid = _set_uid_once  # type: ignore[attr-defined]
        module.validate_uid = _validate_uid_once  # type: ignore[attr-defined]
    PresentationContextItemRQ.decode = _rq_item_decode_once  # type: ignore[method-assign,assignment]
    PresentationContext.add_transfer_syntax = _add_transfer_syntax_once  # type: ignore[method-assign]
    acse.negotiate_as_acceptor = _negotiate_once
    PresentationContextItemAC.from_primitive = _ac_item_from_primitive_once  # type: ignore[method-assign]
    PresentationContextItemAC.encode = _ac_item_encode_once  # type: ignore[method-assign,assignment]
