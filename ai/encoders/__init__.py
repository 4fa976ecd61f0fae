"""Encoders: predictions to standard DICOM objects (highdicom). Only this package and
``node`` speak DICOM objects; models never do."""
