"""Writing outputs: atomic files, TIFF/OME-TIFF with voxel sizes, CSV and text."""

from dm4isl.io.atomic import atomic_path, write_csv, write_text, write_tiff

__all__ = ["atomic_path", "write_csv", "write_text", "write_tiff"]
