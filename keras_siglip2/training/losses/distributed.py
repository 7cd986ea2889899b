"""The SigLIP sigmoid loss across devices without the global B x B logits (paper sec. 2.1,
from SigLIP, Zhai et al. 2023, sec. 3.3 "efficient chunked implementation").

The global batch of B pairs is split over the `n` devices of one mesh axis, b = B / n
pairs each. Every device keeps its own image block zimg_i (b, D) and passes text blocks
around a ring (`jax.lax.ppermute` inside `jax.shard_map`):

    step 0:      device i scores zimg_i against its own texts ztxt_i (positives on the
                 diagonal, negatives elsewhere);
    step k > 0:  the text block moves one device along the ring; device i now holds
                 ztxt_{i-k} and scores it against zimg_i (all negatives).

After n steps every (image, text) pair has been scored exactly once; the per-device sums
are added with one `psum`, so

    loss = -sum_ij log_sigmoid(labels_ij * logits_ij) / B

is exactly `sigmoid_loss` of the gathered embeddings. The backward pass (defined by
hand with `jax.custom_vjp`) runs the same ring once more, recomputing each block and
carrying the text block's gradient along with it, which arrives back at its owner
after the last step. So, forward and backward, a device holds only (b, b) logits and
(b, D) embeddings at any time: O(b^2 + b D) memory instead of O(b B) (gathered texts) or
O(B^2) (global logits).

The ring needs JAX. Without a mesh (one device), with an axis of size 1 or on another
backend, `distributed_sigmoid_loss` computes the plain `sigmoid_loss` (same value).

`SelectedSigLIPLoss` (the `SigLIP2Pretrainer`'s sigmoid term) picks the form when the
train step is traced: the ring under an active `keras.distribution` distribution (JAX)
whose batch axis spans more than one device, otherwise the chunked (with a `chunk_size`)
or plain single-device loss; a mode forces one form.
"""

import keras

from keras_siglip2.training.losses.sigmoid import SigLIPLoss, _prepare, sigmoid_loss


def _jax_mesh(mesh):
    """A `jax.sharding.Mesh` from a Keras `DeviceMesh`, a jax Mesh, or None (the mesh of
    the current `keras.distribution` distribution, None if there is none)."""
    if mesh is None:
        distribution = keras.distribution.distribution()
        if distribution is None:
            return None
        mesh = distribution.device_mesh
    if isinstance(mesh, keras.distribution.DeviceMesh):
        return mesh.backend_mesh
    return mesh


def _default_axis_name(axis_name):
    if axis_name is not None:
        return axis_name
    distribution = keras.distribution.distribution()
    if distribution is not None and getattr(distribution, "batch_dim_name", None):
        return distribution.batch_dim_name
    return "batch"


def distributed_sigmoid_loss(zimg, ztxt, log_temperature, bias, mesh=None, axis_name=None):
    """Scalar float32 sigmoid loss of a batch sharded over the mesh axis `axis_name`,
    computed with the ring of text blocks described in the module docstring.

    Same value and gradients as `sigmoid_loss(zimg, ztxt, log_temperature, bias)`
    (up to float32 summation order); no device ever holds more than (b, b) logits,
    b = B / (size of the axis).

    Args:
        zimg, ztxt: (B, D) L2-normalized image and text embeddings (global arrays,
            e.g. the tensors inside a Keras train step under a `keras.distribution`
            distribution); row i of each is a matching pair.
        log_temperature, bias: scalars (or one-element tensors/variables), t and b.
        mesh: a `keras.distribution.DeviceMesh` or a `jax.sharding.Mesh`; defaults to
            the mesh of the current Keras distribution.
        axis_name: the mesh axis the batch is split over; defaults to the current
            distribution's `batch_dim_name`, else "batch".
    """
    zimg, ztxt, log_t, b = _prepare(zimg, ztxt, log_temperature, bias)
    if keras.backend.backend() != "jax":
        return sigmoid_loss(zimg, ztxt, log_t, b)
    jax_mesh = _jax_mesh(mesh)
    if jax_mesh is None:
        return sigmoid_loss(zimg, ztxt, log_t, b)
    axis_name = _default_axis_name(axis_name)
    if axis_name not in jax_mesh.shape:
        raise ValueError(
            f"`axis_name`={axis_name!r} is not an axis of the mesh; its axes are "
            f"{dict(jax_mesh.shape)}."
        )
    num_devices = jax_mesh.shape[axis_name]
    if num_devices == 1:
        return sigmoid_loss(zimg, ztxt, log_t, b)
    batch = zimg.shape[0]
    if batch is not None and batch % num_devices:
        raise ValueError(
            f"The batch size B={batch} of `zimg`/`ztxt` must be divisible by the "
            f"{num_devices} devices of mesh axis {axis_name!r}; use a global batch "
            f"that is a multiple of {num_devices}."
        )
    return ring_sigmoid_loss_fn(jax_mesh, axis_name)(zimg, ztxt, log_t, b)


class DistributedSigLIPLoss:
    """`distributed_sigmoid_loss` as a callable with the `SigLIPLoss` signature:
    `DistributedSigLIPLoss()(zimg, ztxt, log_temperature, bias)` -> scalar float32.

    Args:
        mesh: optional `keras.distribution.DeviceMesh` / `jax.sharding.Mesh`; defaults
            to the current Keras distribution's mesh at call time.
        axis_name: optional batch axis name (default: the distribution's batch axis).
    """

    def __init__(self, mesh=None, axis_name=None):
        self.mesh = mesh
        self.axis_name = axis_name

    def __call__(self, zimg, ztxt, log_temperature, bias):
        return distributed_sigmoid_loss(
            zimg, ztxt, log_temperature, bias, mesh=self.mesh, axis_name=self.axis_name
        )

    def __repr__(self):
        return f"DistributedSigLIPLoss(axis_name={self.axis_name!r})"


SIGMOID_LOSS_MODES = ("auto", "plain", "chunked", "distributed")


def batch_axis_size(distribution=None):
    """Number of devices the batch is split over by `distribution` (default: the
    current `keras.distribution` distribution): the size of its `batch_dim_name` mesh
    axis; 1 without a distribution."""
    if distribution is None:
        distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    axis = getattr(distribution, "batch_dim_name", None)
    mesh = distribution.device_mesh
    if axis is None or axis not in mesh.axis_names:
        return 1
    return int(dict(zip(mesh.axis_names, mesh.shape))[axis])


def check_sigmoid_loss_mode(mode):
    """Returns `mode` if it is one of `SIGMOID_LOSS_MODES`, else raises ValueError."""
    if not isinstance(mode, str) or mode not in SIGMOID_LOSS_MODES:
        raise ValueError(
            f"`sigmoid_loss` must be one of {list(SIGMOID_LOSS_MODES)}; got {mode!r}."
        )
    return mode


def resolve_sigmoid_loss_mode(mode="auto", chunk_size=None):
    """The form of the sigmoid loss to compute now: "distributed" (the ring) when
    `mode` is "auto", the backend is JAX and the current distribution splits the batch
    over more than one device; otherwise "chunked" when a `chunk_size` is given, else
    "plain". Any other `mode` is returned as given."""
    check_sigmoid_loss_mode(mode)
    if mode != "auto":
        return mode
    if keras.backend.backend() == "jax" and batch_axis_size() > 1:
        return "distributed"
    return "chunked" if chunk_size is not None else "plain"


class SelectedSigLIPLoss:
    """The sigmoid loss in the form `resolve_sigmoid_loss_mode` picks at call time
    (i.e. when a train step is traced), with the `SigLIPLoss` signature:
    `loss(zimg, ztxt, log_temperature, bias)` -> scalar float32.

    All forms give the same value and gradients (up to float32 summation order):
    "plain" holds the (B, B) logits, "chunked" (B, chunk_size) blocks one at a time,
    "distributed" (B / n, B / n) blocks per device of the n-device batch axis (the
    ring; the plain loss without a distribution).

    Args:
        mode: "auto" (default), "plain", "chunked" or "distributed".
        chunk_size: int or None, the text chunk width of the chunked form ("auto"
            chooses it on one device when given; "chunked" defaults to 256).

    `last_mode` is the form used by the latest call (None before the first).
    """

    def __init__(self, mode="auto", chunk_size=None):
        self.mode = check_sigmoid_loss_mode(mode)
        self.chunk_size = chunk_size
        self._single_device = {
            "plain": SigLIPLoss(),
            "chunked": SigLIPLoss(chunked=True, chunk_size=chunk_size),
        }
        self.last_mode = None

    def resolve(self):
        """The form a call would use now."""
        return resolve_sigmoid_loss_mode(self.mode, self.chunk_size)

    def __call__(self, zimg, ztxt, log_temperature, bias):
        mode = self.resolve()
        self.last_mode = mode
        if mode == "distributed":
            return distributed_sigmoid_loss(zimg, ztxt, log_temperature, bias)
        return self._single_device[mode](zimg, ztxt, log_temperature, bias)

    def per_example(self, zimg, ztxt, log_temperature, bias):
        """Per-image losses (B,) (the plain form; for curation, not for gradients)."""
        return self._single_device["plain"].per_example(zimg, ztxt, log_temperature, bias)

    def __repr__(self):
        return f"SelectedSigLIPLoss(mode={self.mode!r}, chunk_size={self.chunk_size!r})"


_RING_FNS = {}


def ring_sigmoid_loss_fn(jax_mesh, axis_name):
    """The jax function (zimg, ztxt, log_t, bias) -> loss for float32 (B, D), (B, D),
    (), () global arrays, with its ring backward pass. Cached per (mesh, axis)."""
    key = (jax_mesh, axis_name)
    if key not in _RING_FNS:
        _RING_FNS[key] = _build_ring_fn(jax_mesh, axis_name)
    return _RING_FNS[key]


def _ring_local_fns(n, axis_name):
    """(forward_local, backward_local): one device's part of the ring loss and of its
    gradient, over n devices on `axis_name`."""
    import jax  # lazy: the JAX backend only
    import jax.numpy as jnp  # lazy: the JAX backend only

    ring = [(i, (i + 1) % n) for i in range(n)]

    def shift(x):
        """Send x to the next device on the ring: after k shifts device i holds the
        block that started on device (i - k) mod n."""
        return jax.lax.ppermute(x, axis_name, ring)

    def block(zimg, chunk, own, temperature, bias):
        """cos, logits and labels of the local images against one text block (b, b)."""
        cos = zimg @ chunk.T
        logits = cos * temperature + bias
        eye = jnp.eye(zimg.shape[0], chunk.shape[0], dtype=bool)
        labels = jnp.where(own & eye, 1.0, -1.0)
        return cos, logits, labels

    def forward_local(zimg, ztxt, log_t, bias, total_batch):
        temperature = jnp.exp(log_t)

        def terms(chunk, own):
            _, logits, labels = block(zimg, chunk, own, temperature, bias)
            return jnp.sum(jax.nn.log_sigmoid(labels * logits))

        def step(_, carry):
            chunk, total = carry
            chunk = shift(chunk)
            return chunk, total + terms(chunk, False)

        total = terms(ztxt, True)  # step 0: own texts, diagonal positives
        _, total = jax.lax.fori_loop(1, n, step, (ztxt, total))
        return -jax.lax.psum(total, axis_name) / total_batch

    def backward_local(zimg, ztxt, log_t, bias, upstream, total_batch):
        temperature = jnp.exp(log_t)
        scale = -upstream / total_batch

        def grads(chunk, own):
            cos, logits, labels = block(zimg, chunk, own, temperature, bias)
            # d log_sigmoid(y * l) / dl = y * sigmoid(-y * l)
            g = labels * jax.nn.sigmoid(-labels * logits) * scale
            return (
                temperature * (g @ chunk),  # d zimg
                temperature * (g.T @ zimg),  # d chunk (belongs to the chunk's owner)
                temperature * jnp.sum(g * cos),  # d log_t
                jnp.sum(g),  # d bias
            )

        def step(_, carry):
            chunk, d_chunk, d_img, d_log_t, d_bias = carry
            chunk, d_chunk = shift(chunk), shift(d_chunk)
            g_img, g_chunk, g_log_t, g_bias = grads(chunk, False)
            return chunk, d_chunk + g_chunk, d_img + g_img, d_log_t + g_log_t, d_bias + g_bias

        d_img, d_chunk, d_log_t, d_bias = grads(ztxt, True)
        carry = jax.lax.fori_loop(1, n, step, (ztxt, d_chunk, d_img, d_log_t, d_bias))
        _, d_chunk, d_img, d_log_t, d_bias = carry
        # After n - 1 shifts device i holds the block of device i + 1: one more shift
        # brings each text gradient home.
        d_txt = shift(d_chunk)
        return (
            d_img,
            d_txt,
            jax.lax.psum(d_log_t, axis_name),
            jax.lax.psum(d_bias, axis_name),
        )

    return forward_local, backward_local


def _build_ring_fn(jax_mesh, axis_name):
    import jax  # lazy: the JAX backend only
    from jax.sharding import PartitionSpec as P  # lazy: the JAX backend only

    forward_local, backward_local = _ring_local_fns(jax_mesh.shape[axis_name], axis_name)
    sharded, replicated = P(axis_name), P()

    def forward(zimg, ztxt, log_t, bias):
        total_batch = float(zimg.shape[0])
        return jax.shard_map(
            lambda *a: forward_local(*a, total_batch),
            mesh=jax_mesh,
            in_specs=(sharded, sharded, replicated, replicated),
            out_specs=replicated,
        )(zimg, ztxt, log_t, bias)

    def backward(residuals, upstream):
        zimg = residuals[0]
        total_batch = float(zimg.shape[0])
        return jax.shard_map(
            lambda *a: backward_local(*a, total_batch),
            mesh=jax_mesh,
            in_specs=(sharded, sharded, replicated, replicated, replicated),
            out_specs=(sharded, sharded, replicated, replicated),
        )(*residuals, upstream)

    @jax.custom_vjp
    def loss(zimg, ztxt, log_t, bias):
        return forward(zimg, ztxt, log_t, bias)

    loss.defvjp(
        lambda *args: (forward(*args), args),
        backward,
    )
    return loss

