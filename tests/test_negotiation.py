"""Negotiation from memory (node.dicom.negotiation) answers as pynetdicom does."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
)
from pynetdicom import AllStoragePresentationContexts, acse, pdu_items, pdu_primitives
from pynetdicom import presentation as pyn_presentation
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_items import PresentationContextItemAC, PresentationContextItemRQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from node.config import Settings
from node.dicom import negotiation
from node.dicom.ae import build_ae
from node.dicom.negotiation import negotiate_from_memory

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.9.7433.9.1"
UNKNOWN_SYNTAX = "1.2.826.0.1.3680043.9.7433.9.2"


def as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom without the memories, for as long as `monkeypatch` lasts."""
    for module in (pdu_items, pdu_primitives, pyn_presentation):
        monkeypatch.setattr(module, "set_uid", negotiation._set_uid)
        monkeypatch.setattr(module, "validate_uid", negotiation._validate_uid)
    monkeypatch.setattr(PresentationContext, "add_transfer_syntax",
                        negotiation._add_transfer_syntax)
    monkeypatch.setattr(acse, "negotiate_as_acceptor", negotiation._negotiate)
    monkeypatch.setattr(PresentationContextItemRQ, "decode", negotiation._rq_item_decode)
    monkeypatch.setattr(PresentationContextItemAC, "from_primitive",
                        negotiation._ac_item_from_primitive)
    monkeypatch.setattr(PresentationContextItemAC, "encode", negotiation._ac_item_encode)


def proposal() -> bytes:
    """An A-ASSOCIATE-RQ as a scanner might send: storage contexts in three syntaxes, one
    SOP class the node does not know, one syntax it does not take, a role selection."""
    contexts = []
    syntaxes = [JPEG2000Lossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    for number, cx in enumerate(AllStoragePresentationContexts[:60]):
        context = PresentationContext()
        context.context_id = 2 * number + 1
        context.abstract_syntax = cx.abstract_syntax
        context.transfer_syntax = syntaxes
        contexts.append(context)
    for abstract, syntax in ((UNKNOWN_SOP_CLASS, ExplicitVRLittleEndian),
                             (MRImageStorage, UNKNOWN_SYNTAX)):
        context = PresentationContext()
        context.context_id = 2 * len(contexts) + 1
        context.abstract_syntax = abstract
        context.transfer_syntax = [syntax]
        contexts.append(context)
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CTImageStorage
    role.scu_role, role.scp_role = True, True
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = "SCANNER", "NODE"
    primitive.presentation_context_definition_list = contexts
    primitive.user_information = [_max_length(), _implementation(), role]
    return A_ASSOCIATE_RQ(primitive).encode()


def _max_length() -> MaximumLengthNotification:
    item = MaximumLengthNotification()
    item.maximum_length_received = 16382
    return item


def _implementation() -> ImplementationClassUIDNotification:
    item = ImplementationClassUIDNotification()
    item.implementation_class_uid = UID("1.2.826.0.1.3680043.9.7433.1")
    return item


def supported() -> list[PresentationContext]:
    """The node's contexts, CT Image Storage with roles (so the answer has a role item)."""
    ae = build_ae(Settings())
    ae.remove_supported_context(CTImageStorage)
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                             scu_role=True, scp_role=True)
    return list(ae.supported_contexts)


def negotiate(request: bytes) -> tuple[list[Any], list[Any], bytes]:
    """What an acceptor makes of `request`: the contexts and role items it decided and the
    A-ASSOCIATE-AC it would send."""
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(request)
    rq = pdu.to_primitive()
    roles = {item.sop_class_uid: (item.scu_role, item.scp_role)
             for item in rq.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    result, reply_roles = acse.negotiate_as_acceptor(
        rq.presentation_context_definition_list, supported(), roles)
    ac = A_ASSOCIATE()
    ac.application_context_name = APPLICATION_CONTEXT
    ac.calling_ae_title, ac.called_ae_title = rq.calling_ae_title, rq.called_ae_title
    ac.result = 0
    ac.presentation_context_definition_results_list = result
    ac.user_information = [_max_length(), _implementation(), *reply_roles]
    return result, reply_roles, A_ASSOCIATE_AC(ac).encode()


def described(result: list[Any], roles: list[Any]) -> list[Any]:
    return [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax, cx.result, cx.as_scu,
             cx.as_scp) for cx in result] + [
        (r.sop_class_uid, r.scu_role, r.scp_role) for r in roles]


def test_negotiation_from_memory_answers_as_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    request = proposal()
    with monkeypatch.context() as shipped:
        as_shipped(shipped)
        result, roles, answer = negotiate(request)
    expected = described(result, roles)
    # The answer covers every case: accepted, unknown SOP class, unknown syntax, a role.
    assert {cx.result for cx in result} == {0x00, 0x03, 0x04}
    assert [r.sop_class_uid for r in roles] == [CTImageStorage]

    negotiate_from_memory()
    negotiation._outcomes.clear()
    first = negotiate(request)
    first[0][0].transfer_syntax = [ImplicitVRLittleEndian]  # the association's own copy
    first[0][0].result = 0x01
    second = negotiate(request)  # decoded, matched and encoded from memory
    for got in (second, negotiate(request)):
        assert described(got[0], got[1]) == expected
        assert got[2] == answer
    assert described(*first[:2]) != expected  # changed above; the memory was not


def test_a_new_proposal_is_negotiated_afresh() -> None:
    negotiate_from_memory()
    request = proposal()
    _, _, answer = negotiate(request)
    fewer = A_ASSOCIATE_RQ()
    fewer.decode(request)
    primitive = fewer.to_primitive()
    primitive.presentation_context_definition_list = (
        primitive.presentation_context_definition_list[:3])
    _, _, fewer_answer = negotiate(A_ASSOCIATE_RQ(primitive).encode())
    assert len(fewer_answer) < len(answer)
    assert negotiate(request)[2] == answer


def test_remembered_syntax_checks_answer_as_pynetdicom_does(
        caplog: pytest.LogCaptureFixture) -> None:
    negotiate_from_memory()
    context = PresentationContext()
    for _ in range(2):  # the second time from memory
        context.abstract_syntax = CTImageStorage
        assert context.abstract_syntax == CTImageStorage
        assert isinstance(context.abstract_syntax, UID)
        with warnings.catch_warnings(), pytest.raises(ValueError):
            warnings.simplefilter("ignore")  # pydicom's own complaint about the length
            context.abstract_syntax = "1.2." * 20  # over 64 characters
        with pytest.raises(ValueError):
            context.add_transfer_syntax("")
        context.add_transfer_syntax(ExplicitVRLittleEndian)
        assert context.transfer_syntax == [ExplicitVRLittleEndian]
        assert isinstance(context.transfer_syntax[0], UID)
    # What pynetdicom warns about is warned about every time.
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        for _ in range(2):
            PresentationContext().add_transfer_syntax(MRImageStorage)
    assert sum("not a transfer syntax" in r.getMessage() for r in caplog.records) == 2
