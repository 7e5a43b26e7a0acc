"""Synthetic head CT: anatomy, lesions, mimics, scanner effects, styles and DICOM writing."""
