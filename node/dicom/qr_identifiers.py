"""Q/R identifiers: the keys of a request, and C-FIND responses built from index rows.

A response is made of pydicom RawDataElements (values already encoded, PS3.5 7.1) in a
Dataset whose original encoding is the negotiated one, so pydicom writes each value as it is
instead of converting every element of every response: a 10,000-study answer spent more time
building and encoding Datasets (about 1 ms a response) than reading the index (20 us).
tests/qr/test_find.py reads the responses back with pydicom. On the fast receive path the
response goes out as `ResponseTemplate.encoded`, its bytes made directly from the row (what
pydicom would write for the Dataset; tests/test_fastpath_pdu.py compares them).

The node's triage keys are in private group 0011, creator "ICHTRIAGE 1.0" (see
docs/query-retrieve.md): (0011,xx01) TriagePriority CS, (0011,xx02) TriageProbability DS,
(0011,xx03) TriageFindings CS 1-n.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

TRIAGE_GROUP = 0x0011
PRIVATE_CREATOR = "ICHTRIAGE 1.0"
TRIAGE_BLOCK = 0x10  # the block the node's creator takes in a response: (0011,0010)
# keyword -> (element offset in the private block, VR)
TRIAGE_TAGS = {"TriagePriority": (0x01, "CS"), "TriageProbability": (0x02, "DS"),
               "TriageFindings": (0x03, "CS")}
_TRIAGE_BY_OFFSET = {offset: keyword for keyword, (offset, _vr) in TRIAGE_TAGS.items()}

UTF8 = "ISO_IR 192"
_QUERY_RETRIEVE_LEVEL = BaseTag(0x00080052)
_SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)
_RETRIEVE_AE_TITLE = BaseTag(0x00080054)
_US = struct.Struct("<H")
_UL = struct.Struct("<I")


def identifier_keys(identifier: Dataset) -> dict[str, list[str]]:
    """Each key of a C-FIND/C-MOVE/C-GET identifier as keyword -> its values as text (an
    empty key: []). The node's private triage keys by their `TRIAGE_TAGS` keyword; other
    private keys, and sequences' contents, are left out (returned empty, never matched).

    Raises what pydicom raises on an element that cannot be decoded.
    """
    keys: dict[str, list[str]] = {}
    for elem in identifier:
        keyword = element_keyword(identifier, elem)
        if keyword is None:
            continue
        if elem.VR == "SQ" or elem.value is None or elem.value == "":
            keys[keyword] = []
        elif isinstance(elem.value, (list, tuple)) or elem.VM > 1:
            keys[keyword] = [str(v).strip() for v in elem.value]
        else:
            keys[keyword] = [str(elem.value).strip()]
    return keys


def element_keyword(identifier: Dataset, elem: DataElement) -> str | None:
    """The keyword of a public element, or of one of the node's private triage elements
    (its block's creator must be PRIVATE_CREATOR); None for any other private element."""
    if not elem.tag.is_private:
        return elem.keyword or None
    if elem.tag.group != TRIAGE_GROUP or elem.tag.is_private_creator:
        return None
    creator = identifier.get((TRIAGE_GROUP << 16) | (elem.tag.element >> 8))
    if creator is None or text(creator.value) != PRIVATE_CREATOR:
        return None
    return _TRIAGE_BY_OFFSET.get(elem.tag.element & 0xFF)


def text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value or "").strip()


@dataclass(frozen=True)
class _Key:
    tag: BaseTag
    vr: str
    keyword: str | None  # None: a key the index does not fill (returned empty)


@dataclass(frozen=True)
class ResponseTemplate:
    """The keys every response to one request carries, in tag order, with their VRs."""

    level: bytes
    retrieve_ae_title: bytes
    keys: tuple[_Key, ...]

    @classmethod
    def of(cls, identifier: Dataset, filled: Iterable[str], level: str, ae_title: str
           ) -> ResponseTemplate:
        """The template for `identifier`'s keys; `filled` are the keywords the index fills."""
        filled = set(filled)
        keys = []
        for elem in identifier:
            if elem.tag in (_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET, _RETRIEVE_AE_TITLE):
                continue
            keyword = element_keyword(identifier, elem)
            if elem.tag.is_private:
                if keyword in TRIAGE_TAGS:
                    offset, vr = TRIAGE_TAGS[keyword]
                    tag = Tag(TRIAGE_GROUP, (TRIAGE_BLOCK << 8) | offset)
                    keys.append(_Key(tag, vr, keyword))
                continue  # private keys the node does not know are not returned
            known = _vr(keyword) if keyword else None
            keys.append(_Key(elem.tag, known or elem.VR or "UN",
                             keyword if keyword in filled else None))
        if any(k.tag.group == TRIAGE_GROUP for k in keys):
            keys.append(_Key(Tag(TRIAGE_GROUP, TRIAGE_BLOCK), "LO", None))
        return cls(_pad(level.encode(), b" "), _pad(ae_title.encode(), b" "),
                   tuple(sorted(keys, key=lambda k: k.tag)))

    def response(self, row: dict[str, Any], *, implicit: bool) -> Dataset:
        """A response to send in the negotiated encoding (little endian, `implicit` VR or
        explicit), with `row`'s values; keys the row lacks are empty (PS3.4 C.2.2.1.3)."""
        elements: dict[BaseTag, DataElement | RawDataElement] = {
            BaseTag(tag): RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, True)
            for tag, vr, value in self._values(row)}
        dataset = Dataset(elements)
        dataset.set_original_encoding(implicit, True, dataset._character_set)
        return dataset

    def encoded(self, row: dict[str, Any], *, implicit: bool) -> bytes:
        """The bytes pydicom writes for `response(row, implicit=implicit)`, made directly
        (tests/test_fastpath_pdu.py compares them): what the fast path sends.

        Raises ValueError for a value too long for its VR's length field in explicit VR."""
        return b"".join(element_header(tag, vr, len(value), implicit=implicit) + value
                        for tag, vr, value in sorted(self._values(row)))

    def _values(self, row: dict[str, Any]) -> list[tuple[int, str, bytes]]:
        """(tag, VR, encoded value) of each element of the response to `row`."""
        values = [(int(_QUERY_RETRIEVE_LEVEL), "CS", self.level),
                  (int(_RETRIEVE_AE_TITLE), "AE", self.retrieve_ae_title)]
        utf8 = False
        for key in self.keys:
            if key.tag.element == TRIAGE_BLOCK and key.tag.group == TRIAGE_GROUP:
                values.append((int(key.tag), "LO", _pad(PRIVATE_CREATOR.encode(), b" ")))
                continue
            value = row.get(key.keyword) if key.keyword is not None else None
            encoded = encode_value(value, key.vr)
            utf8 |= not encoded.isascii()
            values.append((int(key.tag), key.vr, encoded))
        if utf8:
            values.append((int(_SPECIFIC_CHARACTER_SET), "CS", _pad(UTF8.encode(), b" ")))
        return values


# VRs with a 4-byte length in explicit VR (PS3.5 7.1.2)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT",
                      "UV"})
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2s2xI")


def element_header(tag: int, vr: str, length: int, *, implicit: bool) -> bytes:
    """The tag and length (and in explicit VR, the VR) of a little endian data element
    (PS3.5 7.1). Raises ValueError for a length its explicit VR cannot hold."""
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, element, length)
    if vr in LONG_VRS:
        return _EXPLICIT_LONG.pack(group, element, vr.encode(), length)
    if length > 0xFFFF:
        raise ValueError(f"a {vr} value of {length} bytes cannot be written in explicit VR")
    return _EXPLICIT_SHORT.pack(group, element, vr.encode(), length)


@cache
def _vr(keyword: str) -> str | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    vr = dictionary_VR(tag)
    return vr.split(" or ")[0] if vr else None


def encode_value(value: Any, vr: str) -> bytes:
    """`value` (str, int, float, a list of them, or None) as the bytes of a `vr` element,
    padded to even length (PS3.5 6.2, 7.1.1): UIDs with NUL, text with a space; US and UL
    binary. Text is UTF-8 (plain ASCII is the same bytes)."""
    if value is None or value == "" or value == []:
        return b""
    if vr == "US":
        return _US.pack(int(value))
    if vr == "UL":
        return _UL.pack(int(value))
    if vr == "SQ":
        return b""
    values = value if isinstance(value, (list, tuple)) else [value]
    joined = "\\".join(str(v) for v in values).encode()
    return _pad(joined, b"\0" if vr == "UI" else b" ")


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value
