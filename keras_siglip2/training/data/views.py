"""Decoding and the training views of one record (stage 4 of `image_text_dataset`):
the image at the model resolution (sigmoid loss, paper sec. 2.1; LocCa, sec. 2.2), the
SILC local crops and the TIPS patch mask (sec. 2.3), or the uint8 image for NaFlex
patchification (sec. 2.4.2). The crops and masks are drawn by `augment.py` from a seed
derived from the run's seed and the example's position."""

import tensorflow as tf

from keras_siglip2.training.data import augment
from keras_siglip2.training.data.record_checks import _path_exists
from keras_siglip2.training.data.report import CODES, END_OF_EPOCH

VIEWS = ("image", "local", "masked", "naflex")


def _check_views(views):
    if isinstance(views, str):
        views = (views,)
    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"`views` must be a non-empty subset of {VIEWS}; got views={views!r}.")
    if "naflex" in views and ("local" in views or "masked" in views):
        raise ValueError(
            "NaFlex training (paper sec. 2.4.2) uses no SILC / TIPS views: `views` cannot "
            f"combine 'naflex' with 'local' or 'masked'; got views={views!r}."
        )
    return views


class _Views:
    """Decodes one record and computes the requested views (stage 4)."""

    def __init__(self, views, converter, local_converter, num_patches, seed, naflex,
                 view_config, local_crop_scale):
        self.views = views
        self.converter = converter
        self.local_converter = local_converter
        self.num_local_crops = view_config.num_local_crops
        self.local_crop_scale = local_crop_scale
        self.num_patches = num_patches
        self.mask_ratio = view_config.mask_ratio
        self.seed = seed
        self.naflex = naflex
        self.config = view_config
        # The SILC teacher's augmented global view comes with the local crops.
        self.teacher = "local" in views and view_config.teacher_crop_scale is not None

    def _local(self, image, seed, compute):
        size = tuple(self.local_converter.image_size)
        if not compute:
            return tf.zeros((self.num_local_crops,) + size + (3,), tf.float32)
        crops = augment.local_crops(image, augment.fold_seed(seed, 1),
                                    self.num_local_crops, size, self.local_crop_scale)
        # The converter's [0, 255] -> [-1, 1] map (its resize is not needed).
        return tf.cast(crops * self.local_converter.scale + self.local_converter.offset,
                       tf.float32)

    def _teacher(self, image, seed, compute):
        size = tuple(self.converter.image_size)
        if not compute:
            return tf.zeros(size + (3,), tf.float32)
        c = self.config
        view = augment.teacher_view(
            image, augment.fold_seed(seed, 3), size, tuple(c.teacher_crop_scale),
            flip=c.teacher_flip, jitter=c.teacher_color_jitter,
            jitter_probability=c.teacher_jitter_probability,
            grayscale_probability=c.teacher_grayscale_probability)
        return tf.cast(view * self.converter.scale + self.converter.offset, tf.float32)

    def _outputs(self, raw, image, status, position, compute=True):
        """The element after decoding; `compute=False` (a failed decode) fills the views
        with zeros of the right shapes without computing them."""
        out = {k: raw[k] for k in ("text", "boxes", "box_texts", "language", "source",
                                   "record", "bucket")}
        out["status"] = tf.where(raw["status"] == END_OF_EPOCH, END_OF_EPOCH, status)
        seed = augment.fold_seed(tf.stack([tf.cast(self.seed, tf.int64), 0]), position)
        if self.naflex:
            out["image_uint8"] = image
        elif "image" in self.views:
            shape = self.converter.image_size + (3,)
            out["images"] = tf.ensure_shape(
                tf.cast(self.converter(image), tf.float32), shape
            ) if compute else tf.zeros(shape, tf.float32)
        if "local" in self.views:
            out["local_images"] = self._local(image, seed, compute)
        if self.teacher:
            out["teacher_images"] = self._teacher(image, seed, compute)
        if "masked" in self.views:
            out["tips_mask"] = augment.tips_mask(
                augment.fold_seed(seed, 2), self.num_patches, self.mask_ratio
            ) if compute else tf.zeros([self.num_patches], tf.int32)
        return out

    def decode(self, raw):
        from_path = tf.strings.length(raw["image"]) == 0
        data = tf.cond(
            tf.logical_and(from_path, tf.strings.length(raw["image_path"]) > 0),
            lambda: tf.io.read_file(raw["image_path"]),
            lambda: raw["image"],
        )
        status = augment.image_integrity_status(data)
        image = tf.cond(
            status == 0,
            lambda: augment.decode_image(data),
            lambda: tf.zeros([2, 2, 3], tf.uint8),
        )
        shape = tf.shape(image)
        too_small = tf.logical_or(shape[0] < 2, shape[1] < 2)
        status = tf.where(tf.logical_and(status == 0, too_small), CODES["image_too_small"], status)
        image = tf.cond(too_small, lambda: tf.zeros([2, 2, 3], tf.uint8), lambda: image)
        return self._outputs(raw, image, tf.cast(status, tf.int32), raw["position"])

    def failed(self, raw):
        path = raw["image_path"]
        missing = tf.logical_and(
            tf.logical_and(tf.strings.length(raw["image"]) == 0, tf.strings.length(path) > 0),
            tf.logical_not(_path_exists(path)),
        )
        status = tf.where(missing, CODES["missing_image_file"], CODES["undecodable_image"])
        return self._outputs(raw, tf.zeros([2, 2, 3], tf.uint8), tf.cast(status, tf.int32),
                             raw["position"], compute=False)
