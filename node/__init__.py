"""The ICH triage node: DICOM services, the triage worker, the scheduler, HTTP and the CLI."""
