"""Deprecated alias (kept for one release): image input moved to
`keras_siglip2.media.images`."""

from keras_siglip2.media.images import *  # noqa: F401,F403
from keras_siglip2.media.images import (  # noqa: F401  (names `*` leaves out)
    IMAGE_EXTENSIONS,
    UnreadableImageWarning,
    _is_path,
    _is_pil,
)
