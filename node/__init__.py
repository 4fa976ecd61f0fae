"""Everything facing the outside: DICOM listener, sender, command line."""
