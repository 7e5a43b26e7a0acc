"""DICOM network services of the node (PS3.7 DIMSE, PS3.4 service classes)."""
