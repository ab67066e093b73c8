"""Offline corpus -> WebDataset shards: readers (DICOM, PNG, NIfTI...), writer, manifest, splits."""
