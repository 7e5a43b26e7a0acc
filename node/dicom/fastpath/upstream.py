"""The pynetdicom methods the fast path copies or relies on, with a digest of their source.

tests/test_fastpath.py fails when the installed pynetdicom's source of any of them differs
from the digest here: the fast path's copy must then be compared with the new upstream code
and the digest renewed, in the same change that moves UPSTREAM_VERSION.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

# "module:Class.method" -> sha256 of inspect.getsource() in pynetdicom 3.0.4
COPIED = {
    # copied, changed where the node's docstrings say
    "pynetdicom.dul:DULServiceProvider._read_pdu_data":
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
    "pynetdicom.dul:DULServiceProvider._decode_pdu":
        "fc71dd1bf853e1ce79d29b11731a26a4f6ee9eb697026ad611f8fc91f8aa69c9",
    "pynetdicom.pdu:A_ASSOCIATE_RQ.to_primitive":
        "92cb1a8bedf659e5ed93aafac546740e080a9e94cae90b22e150f407e4c05019",
    "pynetdicom.dul:DULServiceProvider.run_reactor":
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "pynetdicom.association:Association._run_reactor":
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
    "pynetdicom.transport:RequestHandler._create_association":
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
    "pynetdicom.dimse:DIMSEServiceProvider.receive_primitive":
        "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f",
    "pynetdicom.dimse:DIMSEServiceProvider.send_msg":
        "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0",
    "pynetdicom.ae:ApplicationEntity.associate":
        "dbc8cf47090386b2068817f6e65e39ca2c0d5b8fd80f6b9b7a322d37b85b2985",
    "pynetdicom.association:Association._serve_request":
        "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877",
    "pynetdicom.service_class:QueryRetrieveServiceClass._c_find_scp":
        "da242b908ef4848ceaec8937680dfe9d23705301f6bad99de6dd64786cd9a7ca",
    "pynetdicom.association:Association.send_c_store":
        "fa5a8127f349f8e75698f4cdf2b4dbe3f38e3e9e320a8cf45c15bf8333f9c283",
    "pynetdicom.dul:DULServiceProvider._process_recv_primitive":
        "4c0ebbb3e646e35e8e5bbc27ee2f1e6b2c82bbf619232f47639a6cbae092ed39",
    "pynetdicom.dimse_messages:DIMSEMessage.encode_msg":
        "73000c902c52832dab302ddb3bc274ea93d205a810a197225dd87d4c1212ba57",
    # node.dicom.fastpath.move.MoveSCP follows it step by step
    "pynetdicom.service_class:QueryRetrieveServiceClass._move_scp":
        "5c14d1be3d737befcc148893bcd529a03695e82f8f943f19b640ff4f32382742",
    # relied on: the attributes and calls the subclasses use
    "pynetdicom.dul:DULServiceProvider.__init__":
        "c82dafa9438ddf70685917cb15d2bfbc814aa0ad5233ffb0ae650faedc7570f0",
    "pynetdicom.dul:DULServiceProvider.kill_dul":
        "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842",
    "pynetdicom.association:Association.__init__":
        "eb07516b8009ad8fa338201dea39578380fbf9f2c59fa5e368e20250eb97c4ea",
    "pynetdicom.association:Association.kill":
        "8f9713666a7f4cffd840899f023090e9786668945a7c844f99d7a834077c3972",
    "pynetdicom.transport:AssociationSocket.__init__":
        "1f0325fdef2cc35320f7854b1643c528f764665e4d4e52ca4392f60f74537293",
    "pynetdicom.association:Association.release":
        "c7d713502b77d70284320ac20245444b78f49a9d37b6a351d38e18344edaae43",
    "pynetdicom.association:Association._check_received_status":
        "364c3ae215b58646a8ab3accac6dddac5ddc820b7bcf210d38d98f52ff19844a",
    "pynetdicom.association:Association._handle_no_response":
        "6f3d62518395c3a8272f401da36d2136053cda76b6cafd6b12e045b8850634fd",
    "pynetdicom.service_class:ServiceClass._wrap_handler":
        "4322159402f181cdde6565467ae7dd8fe98aeaf89cba5227c75258205ea3f441",
    "pynetdicom.service_class:QueryRetrieveServiceClass._get_scp":
        "8ca1538e3e56c4f7317f3d8bd0d0e009d596e9f3c57027db3128ec7e728e46a6",
    "pynetdicom.fsm:DT_1":
        "82e5c5d4114534fa9ac86124c7c7ef11ff2b98bc73069372cbe413af9df19081",
    "pynetdicom.dsutils:split_dataset":
        "377ac781c097b81f92e08b5c78e18efbc85a94c7f43c4dfdd30dd39fa1028b05",
    "pynetdicom.ae:ApplicationEntity._create_socket":
        "f56bca8888e1ce9f3d64f30608db5d89f003b0b1b31106d3178a550871a4030f",
    "pynetdicom.service_class:ServiceClass.validate_status":
        "4c92e97ae31a8f1f2c779c04f9fd331327d2620f6b14574e5196bd86faf93cb0",
    "pynetdicom.service_class:attempt":
        "84f10d07058a614c270ce734e8c17f9939c0e4a7904ba58da35cb3399cb6b5e3",
    "pynetdicom.service_class:QueryRetrieveServiceClass.is_cancelled":
        "fb9acf44b9bd05fe24ce6e191ae246f9353cbb10a14a09bad7312714c30f50d4",
    "pynetdicom.dimse:DIMSEServiceProvider.get_msg":
        "890e3e04283f5aeb756236f1a4dd35d3a10bbdd52f3efa3f3950c01f47bd2b34",
}


def source_digest(name: str) -> str:
    """sha256 of the installed source of `name` ("module:Class.method").

    Raises ImportError or AttributeError when it no longer exists.
    """
    module_name, _, qualname = name.partition(":")
    target: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return hashlib.sha256(inspect.getsource(target).encode()).hexdigest()  # type: ignore[arg-type]


def changed() -> list[str]:
    """The names whose installed source no longer matches COPIED."""
    out = []
    for name, digest in COPIED.items():
        try:
            if source_digest(name) != digest:
                out.append(name)
        except (ImportError, AttributeError):
            out.append(name)
    return out
