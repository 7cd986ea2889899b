"""Image input for the SigLIP 2 tasks (zero-shot classification, retrieval, dense
features; paper sec. 3): turns files, folders, PIL images and arrays into RGB uint8
arrays, with one clear error for a missing file or an image-less folder and a warning
(naming the file) for an unreadable image among good ones."""

import os
import warnings

import numpy as np

# Extensions looked for when a folder is given.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def _is_path(x):
    return isinstance(x, (str, os.PathLike))


def _is_pil(x):
    try:
        from PIL import Image  # lazy: optional dependency (pillow), absent -> no PIL images
    except ImportError:  # pillow is a dependency; without it there are no PIL images
        return False
    return isinstance(x, Image.Image)


def list_images(directory, recursive=False):
    """The image files in `directory` (by extension, case-insensitive), sorted.

    Raises FileNotFoundError if the folder does not exist and ValueError if it holds
    no image file."""
    directory = os.path.expanduser(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Image folder {directory!r} does not exist.")
    if recursive:
        candidates = [
            os.path.join(root, name)
            for root, _, names in os.walk(directory)
            for name in names
        ]
    else:
        candidates = [os.path.join(directory, n) for n in os.listdir(directory)]
    found = sorted(
        p for p in candidates
        if os.path.isfile(p) and os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS
    )
    if not found:
        raise ValueError(
            f"Folder {directory!r} contains no images (looked for files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)})."
        )
    return found


def expand_image_paths(paths, recursive=False):
    """Files stay as they are, folders become their sorted image files. Raises
    FileNotFoundError for a path that does not exist (before anything is decoded)."""
    if _is_path(paths):
        paths = [paths]
    out = []
    for path in paths:
        if not _is_path(path):
            raise TypeError(
                f"Expected image file or folder paths; got {type(path).__name__}: {path!r}."
            )
        local = os.path.expanduser(os.fspath(path))
        if os.path.isdir(local):
            out.extend(list_images(local, recursive=recursive))
        elif os.path.isfile(local):
            out.append(local)
        else:
            raise FileNotFoundError(f"Image file {os.fspath(path)!r} does not exist.")
    return out


def load_image(path):
    """Decodes one image file with PIL (EXIF orientation applied) to an RGB uint8
    array (H, W, 3). Raises FileNotFoundError if it does not exist and ValueError if
    it is not a readable image."""
    from PIL import Image, ImageOps  # lazy: decoding only when a file is read

    local = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(local):
        raise FileNotFoundError(f"Image file {os.fspath(path)!r} does not exist.")
    try:
        with Image.open(local) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        reason = reason.replace(f" {local!r}", "").replace(f" '{local}'", "").rstrip(": ")
        raise ValueError(f"Cannot read image {os.fspath(path)!r}: {reason}") from None


def to_rgb_array(image, where="image"):
    """An array / PIL image / path as an RGB array (H, W, 3): uint8 stays uint8,
    floats keep their [0, 255] values; gray and RGBA become RGB."""
    if _is_path(image):
        return load_image(image)
    if _is_pil(image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype.kind not in "uif" or array.ndim not in (2, 3):
        raise ValueError(
            f"{where} must be an image: a file path, a PIL image or an array (H, W) / "
            f"(H, W, C) of pixel values in [0, 255]; got {type(image).__name__} with "
            f"shape {array.shape} and dtype {array.dtype}."
        )
    if array.ndim == 2:
        array = array[..., None]
    channels = array.shape[-1]
    if channels in (1, 2):
        array = np.repeat(array[..., :1], 3, axis=-1)
    elif channels == 4:
        array = array[..., :3]
    elif channels != 3:
        raise ValueError(
            f"{where} has {channels} channels (shape {array.shape}); expected 1, 2, 3 or "
            "4 (gray, gray + alpha, RGB, RGBA)."
        )
    if array.dtype.kind == "f" and array.size:
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{where} has NaN or inf pixel values.")
        lo, hi = float(array.min()), float(array.max())
        if lo < 0.0 or hi > 255.0:
            raise ValueError(
                f"{where} has pixel values in [{lo:g}, {hi:g}]; expected raw pixels in "
                "[0, 255] (the preprocessor maps them to [-1, 1] itself)."
            )
        if hi <= 1.0 and hi > 0.0:
            warnings.warn(
                f"{where} is a float image with values in [{lo:g}, {hi:g}]: pixel values "
                "are expected in [0, 255], not [0, 1]; multiply by 255 if it is a [0, 1] "
                "image.",
                stacklevel=3,
            )
    return array


def as_image_list(images):
    """Splits what a user passes as "images" into a list of single images (paths,
    PIL images or arrays): a path to a folder becomes its image files, one image a
    list of one, a (B, H, W, C) array a list of B images."""
    if _is_path(images):
        return expand_image_paths([images])
    if _is_pil(images):
        return [images]
    if isinstance(images, np.ndarray) or hasattr(images, "__array__"):
        array = np.asarray(images)
        if array.ndim == 4:
            return list(array)
        return [array]
    if isinstance(images, (list, tuple)):
        items = []
        for item in images:
            if _is_path(item):
                items.extend(expand_image_paths([item]))
            else:
                items.append(item)
        if not items:
            raise ValueError("`images` is empty; expected at least one image.")
        return items
    raise TypeError(
        "`images` must be a file or folder path, a PIL image, an array (H, W, C) or "
        f"(B, H, W, C), or a list of these; got {type(images).__name__}."
    )


def describe(image, index):
    """How an item of an image list is named in messages and ids."""
    return os.fspath(image) if _is_path(image) else f"image {index}"


def check_files_exist(items):
    """Raises FileNotFoundError for the first path in `items` that is not a file."""
    for item in items:
        if _is_path(item) and not os.path.isfile(os.path.expanduser(os.fspath(item))):
            raise FileNotFoundError(f"Image file {os.fspath(item)!r} does not exist.")


def read_images(items, start=0, skip_unreadable=True):
    """Decodes a list of single images (items of `as_image_list`) to RGB arrays.

    Returns `(arrays, kept, skipped)`: the arrays of the readable images, their
    positions (`start` + index in `items`), and `(name, reason)` for each skipped
    file. A file that exists but cannot be decoded is skipped with an
    `UnreadableImageWarning` naming it when `skip_unreadable`, else ValueError."""
    arrays, kept, skipped = [], [], []
    for i, item in enumerate(items, start=start):
        try:
            arrays.append(to_rgb_array(item, where=describe(item, i)))
        except ValueError as e:
            if not (skip_unreadable and _is_path(item)):
                raise
            skipped.append((describe(item, i), str(e)))
            warnings.warn(f"Skipping unreadable image: {e}", UnreadableImageWarning, stacklevel=2)
            continue
        kept.append(i)
    return arrays, kept, skipped


def load_images(images, skip_unreadable=True):
    """Loads images (anything `as_image_list` takes) to a list of RGB arrays.

    Returns `(arrays, kept, skipped)` as `read_images`. A missing file is a
    FileNotFoundError (checked before anything is decoded); an unreadable file is
    skipped with a warning naming it (`skip_unreadable=True`) or a ValueError; if no
    image is readable at all, ValueError."""
    items = as_image_list(images)
    check_files_exist(items)
    arrays, kept, skipped = read_images(items, skip_unreadable=skip_unreadable)
    if not arrays:
        raise ValueError(
            f"None of the {len(items)} images could be read (first: {skipped[0][1]})."
        )
    return arrays, kept, skipped


__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImageWarning",
    "as_image_list",
    "check_files_exist",
    "expand_image_paths",
    "list_images",
    "load_image",
    "load_images",
    "read_images",
    "to_rgb_array",
]
