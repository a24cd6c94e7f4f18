"""Media: find the files of a folder (`scan`) and decode them (`image`, `audio`).

Nothing here imports torch: scanning a folder and decoding a file never load a model.
"""

from xretrieve.media.audio import AUDIO_EXTS, DecodedAudio, decode_audio, prepare_waveform
from xretrieve.media.image import IMAGE_EXTS, DecodedImage, decode_image, load_image, to_rgb
from xretrieve.media.scan import (
    CAPTION_EXTS,
    MediaFile,
    Problem,
    Scan,
    iter_sidecar_pairs,
    read_captions,
    scan_folder,
)

__all__ = [
    "AUDIO_EXTS",
    "CAPTION_EXTS",
    "IMAGE_EXTS",
    "DecodedAudio",
    "DecodedImage",
    "MediaFile",
    "Problem",
    "Scan",
    "decode_audio",
    "decode_image",
    "iter_sidecar_pairs",
    "load_image",
    "prepare_waveform",
    "read_captions",
    "scan_folder",
    "to_rgb",
]
