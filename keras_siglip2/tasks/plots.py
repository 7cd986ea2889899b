"""Deprecated alias (kept for one release): the plots moved to
`keras_siglip2.media.plots`."""

from keras_siglip2.media.plots import *  # noqa: F401,F403
