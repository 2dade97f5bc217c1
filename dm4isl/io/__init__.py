"""Writing outputs: atomic files, OME-TIFF with voxel sizes and channel names, CSV and text; the output layout."""

from dm4isl.io.atomic import atomic_path, read_channel_names, read_tiff_info, write_csv, write_text, write_tiff
from dm4isl.io.layout import OME_TIFF_SUFFIX, channel_name, product_file, seed_product

__all__ = [
    "OME_TIFF_SUFFIX",
    "atomic_path",
    "channel_name",
    "product_file",
    "read_channel_names",
    "read_tiff_info",
    "seed_product",
    "write_csv",
    "write_text",
    "write_tiff",
]
