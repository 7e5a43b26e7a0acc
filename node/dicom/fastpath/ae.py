"""pynetdicom's Application Entity for the node's fast path: the associations it requests are
`WakingAssociation`s.

The node requests associations for one thing: the C-STORE sub-operations of a C-MOVE
(pynetdicom's Query/Retrieve service class calls `ae.associate()` for the move destination).
pynetdicom's own requestor association polls: its upper layer thread sleeps 1 ms whenever it
finds nothing to do, and its reactor another 1 ms a turn, and each C-STORE waits on both
(and, on a loaded host, on the scheduler after each sleep). A 200-slice move ran at 24-50
slices/s where Orthanc moved the same series at 225-655. A `WakingAssociation` waits on its
socket and queues instead, and sends a `StoredFile` as stored.

`associate()` follows pynetdicom 3.0.4 `ApplicationEntity.associate` apart from the class of
the association it makes; its socket has TCP_NODELAY set (`_create_socket`).
"""

from __future__ import annotations

import socket
from copy import deepcopy
from datetime import datetime
from ssl import SSLContext
from typing import Any

from pynetdicom._globals import DEFAULT_MAX_LENGTH, MODE_REQUESTOR
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AddressInformation, AssociationSocket

from node.dicom.fastpath.association import WakingAssociation


class RequestingAE(ApplicationEntity):
    """An Application Entity whose requested associations are `WakingAssociation`s."""

    sends_stored_files = True  # its associations send a StoredFile as stored

    def associate(self, addr: str | tuple[str, int, int], port: int,
                  contexts: list[PresentationContext] | None = None,
                  ae_title: str = "ANY-SCP", max_pdu: int = DEFAULT_MAX_LENGTH,
                  ext_neg: list[Any] | None = None,
                  bind_address: tuple[str, int] | tuple[str, int, int, int] | None = None,
                  tls_args: tuple[SSLContext, str] | None = None,
                  evt_handlers: list[Any] | None = None) -> Association:
        """pynetdicom's associate() (same arguments, same checks), making a
        WakingAssociation. Raises TypeError, ValueError, RuntimeError as pynetdicom's does."""
        if not isinstance(addr, (str, tuple)) or (isinstance(addr, tuple) and (
                not isinstance(addr[0], str) or not isinstance(addr[1], int)
                or not isinstance(addr[2], int))):
            raise TypeError("'addr' must be str or tuple[str, int, int]")
        if not isinstance(port, int):
            raise TypeError("'port' must be int")
        remote_address = AddressInformation.from_addr_port(addr, port)
        if bind_address is None:
            bind_address = ("", 0)
            if remote_address.address_family == socket.AF_INET6:
                bind_address = ("::0", 0)
        if (not isinstance(bind_address, (tuple, list)) or len(bind_address) not in (2, 4)
                or not isinstance(bind_address[0], str) or not isinstance(bind_address[1], int)
                or (len(bind_address) == 4 and not all(isinstance(v, int)
                                                       for v in bind_address[2:]))):
            raise TypeError("'bind_address' must be tuple[str, int] or "
                            "tuple[str, int, int, int]")
        local_address = AddressInformation.from_tuple(bind_address)

        assoc = WakingAssociation(self, MODE_REQUESTOR)
        assoc.name = f"RequestorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(self._create_socket(assoc, local_address, tls_args))
        assoc.acceptor.ae_title = ae_title
        assoc.acceptor.address_info = remote_address
        assoc.requestor.address_info = local_address
        assoc.requestor.ae_title = self.ae_title
        assoc.requestor.maximum_length = max_pdu
        assoc.requestor.implementation_class_uid = self.implementation_class_uid
        assoc.requestor.implementation_version_name = self.implementation_version_name
        for item in ext_neg or []:
            assoc.requestor.add_negotiation_item(item)
        contexts = contexts or self.requested_contexts
        self._validate_requested_contexts(contexts)
        if not contexts:
            raise RuntimeError("At least one requested presentation context is required "
                               "before associating with a peer")
        contexts = deepcopy(contexts)
        for ii, context in enumerate(contexts):
            context.context_id = 2 * ii + 1
        assoc.requestor.requested_contexts = contexts
        for evt_hh_args in evt_handlers or []:
            assoc.bind(*evt_hh_args)
        assoc.request()
        if assoc.is_established:
            assoc.start()
        return assoc

    def _create_socket(self, assoc: Association, address: AddressInformation,
                       tls_args: tuple[SSLContext, str] | None) -> AssociationSocket:
        """pynetdicom's socket for a requested association, with TCP_NODELAY (as the node's
        accepted connections have): a sub-operation's last segment and the release are not
        held back waiting for the peer's acknowledgement."""
        sock = super()._create_socket(assoc, address, tls_args)
        if sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
