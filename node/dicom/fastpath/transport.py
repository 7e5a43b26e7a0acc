"""pynetdicom's request handler for the node's fast receive path.

Each accepted connection becomes a `WakingAssociation` reading through the node's
`GuardedSocket`, with the server's presentation contexts as a new list of the same,
read-only context objects rather than a deep copy (22 ms per association for the node's 171
contexts; negotiation only reads them and builds new result contexts).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.events import NotificationEvent
from pynetdicom.transport import AssociationSocket

from node.dicom.fastpath.association import WakingAssociation
from node.dicom.guard import GuardedRequestHandler


class WakingRequestHandler(GuardedRequestHandler):
    """Builds each accepted association as a `WakingAssociation`; returns when it ends."""

    def _create_association(self) -> Association:
        # pynetdicom 3.0.4 RequestHandler._create_association, with WakingAssociation, the
        # guarded socket, and a new list of the server's (read-only) contexts.
        server = cast(Any, self.server)
        assoc = WakingAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=cast(Any, self.request)))
        self._guard(assoc)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = list(server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, NotificationEvent):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc
