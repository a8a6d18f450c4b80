"""Compressors for episode arrays: a real image codec for frames, lossless Blosc/Zstd for the rest.

Stores are Zarr format 2 with numcodecs compressors, so any Zarr (2.x or 3.x) reads them once the
image codecs are registered: `import imagecodecs.numcodecs; imagecodecs.numcodecs.register_codecs()`.
"""

from __future__ import annotations

import imagecodecs.numcodecs
import numcodecs

from htouch.dataset.schema import ArraySpec, CameraSpec
from htouch.errors import DatasetError

imagecodecs.numcodecs.register_codecs()

IMAGE_CODECS = ("jpeg", "png")


def compressor_for(spec: ArraySpec, camera: CameraSpec) -> numcodecs.abc.Codec:
    """The Zarr compressor of one array: the camera's image codec (JPEG or PNG) for frames, Blosc otherwise;
    DatasetError for an unknown codec or quality."""
    if spec.codec == "image":
        if camera.codec == "jpeg":
            if not 1 <= camera.quality <= 100:
                raise DatasetError(f"camera.quality must be 1..100, got {camera.quality}")
            return imagecodecs.numcodecs.Jpeg(level=camera.quality)
        if camera.codec == "png":
            return imagecodecs.numcodecs.Png()
        raise DatasetError(f"unknown camera codec {camera.codec!r}; use one of {', '.join(IMAGE_CODECS)}")
    shuffle = numcodecs.Blosc.BITSHUFFLE if spec.dtype in ("bool", "int16") else numcodecs.Blosc.SHUFFLE
    return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=shuffle)
