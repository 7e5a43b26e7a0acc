"""The node's Application Entity: which services, SOP classes and transfer syntaxes it accepts."""

from __future__ import annotations

import ssl

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts

from node.config import Settings
from node.dicom import fastpath

VERIFICATION = "1.2.840.10008.1.1"
# Query/Retrieve information models (PS3.4 C.6.1, C.6.2), SOP Class UIDs from PS3.4 C.6.1.1
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_ROOT = (PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET)
STUDY_ROOT = (STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET)
QUERY_RETRIEVE = PATIENT_ROOT + STUDY_ROOT

# Stored as received, never transcoded: every syntax a CT scanner or PACS commonly sends.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


def build_ae(settings: Settings) -> AE:
    """An AE accepting C-ECHO, C-STORE of every storage SOP class (a PACS node keeps what
    it is sent: scouts, dose reports, SRs) and Patient and Study Root C-FIND, C-MOVE and
    C-GET, with the node's limits and timeouts. A storage context proposed with SCP/SCU role
    selection (PS3.7 D.3.3.4) is accepted in the roles proposed: a C-GET caller is the storage
    SCP of its sub-operations. On the fast receive path its own associations (C-MOVE
    sub-operations) are the node's (`node.dicom.fastpath.ae`)."""
    ae = fastpath.application_entity(settings.receive_path)(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    # The supervisor rejects past max_associations (node-wide and per host) and logs why;
    # pynetdicom's own per-process count is only a backstop.
    ae.maximum_associations = 2 * settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.association_request_timeout
    ae.dimse_timeout = 60
    # The called AE title is checked by our EVT_REQUESTED handler, which logs why it rejects.
    ae.require_called_aet = False
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), TRANSFER_SYNTAXES, scu_role=True,
                                 scp_role=True)
    for sop_class in QUERY_RETRIEVE:
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_supported_context(VERIFICATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the DICOM port (PS3.15 B.1) when a certificate is configured; with tls_ca the
    caller must present a certificate that CA signed."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_ca is not None:
        ctx.load_verify_locations(settings.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
