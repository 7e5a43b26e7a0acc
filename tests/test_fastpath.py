"""The fast receive path is tied to one pynetdicom version, and falls back to the stock path."""

from __future__ import annotations

import logging

import pynetdicom
import pytest

from node.dicom import fastpath
from node.dicom.fastpath import upstream
from node.dicom.guard import GuardedRequestHandler


def test_copied_upstream_methods_are_unchanged() -> None:
    # Fails on a pynetdicom upgrade that changes any method the fast path copies or relies
    # on: compare the copy with the new upstream code, then renew the digests and
    # UPSTREAM_VERSION together.
    assert pynetdicom.__version__ == fastpath.UPSTREAM_VERSION
    assert upstream.changed() == []


def test_a_changed_upstream_method_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    name = next(iter(upstream.COPIED))
    monkeypatch.setitem(upstream.COPIED, name, "0" * 64)
    assert upstream.changed() == [name]
    monkeypatch.setitem(upstream.COPIED, "pynetdicom.dul:DULServiceProvider.gone", "0" * 64)
    assert "pynetdicom.dul:DULServiceProvider.gone" in upstream.changed()


def test_the_fast_path_on_its_own_version() -> None:
    from node.dicom.fastpath.transport import WakingRequestHandler

    assert fastpath.request_handler("fast") is WakingRequestHandler
    assert issubclass(WakingRequestHandler, GuardedRequestHandler)
    assert fastpath.request_handler("stock") is GuardedRequestHandler


def test_another_version_falls_back_to_the_stock_path_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fastpath, "_warned", type(fastpath._warned)())
    caplog.set_level(logging.WARNING, logger="node.dicom.fastpath")
    for _ in range(3):
        assert fastpath.request_handler("fast", version="3.1.0") is GuardedRequestHandler
    warnings = [r for r in caplog.records if "follows pynetdicom 3.0.4, not 3.1.0" in r.message]
    assert len(warnings) == 1


def test_an_unknown_path_is_an_error() -> None:
    with pytest.raises(ValueError, match="receive path"):
        fastpath.request_handler("turbo")
