"""DIMSE status codes the node answers with (PS3.4 Annex B.2.3 for C-STORE, PS3.7 C)."""

SUCCESS = 0x0000
# Failures (PS3.4 Table B.2-1)
OUT_OF_RESOURCES = 0xA700  # disk full, database unavailable: the sender should retry later
DATASET_DOES_NOT_MATCH = 0xA900  # data set does not match the SOP class of the context
CANNOT_UNDERSTAND = 0xC000  # missing or invalid UIDs, an unparsable data set
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized (PS3.7 Annex C, a general status)
# Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # no or an unknown level, a key below the level
UNABLE_TO_PROCESS = 0xC000  # a value its VR cannot match (a wildcard in a UID, a bad date)
QUERY_DATABASE_FAILURE = 0xC320  # the index failed while answering
MOVE_DESTINATION_UNKNOWN = 0xA801

DESCRIPTIONS = {
    SUCCESS: "success",
    OUT_OF_RESOURCES: "out of resources",
    DATASET_DOES_NOT_MATCH: "data set does not match SOP class",
    CANNOT_UNDERSTAND: "cannot understand",
    PROCESSING_FAILURE: "processing failure",
    NOT_AUTHORIZED: "not authorized",
}

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03  # source: service user
REASON_CALLED_AE_NOT_RECOGNIZED = 0x07  # source: service user
REASON_LOCAL_LIMIT_EXCEEDED = 0x02  # source: service provider (presentation)
