"""The layers the models are built of: Dense layers initialised as PyTorch's (or as Burda et
al.'s), the MLP, and stride-2 convolutions and their transposes as matrix products over
image patches.

XLA:CPU runs the gradients of strided and dilated convolutions inside ``lax.scan`` several
times slower than one product over patches; :class:`Conv2x` and :class:`ConvTranspose2x`
hold the same parameters as ``nn.Conv`` and ``nn.ConvTranspose`` with stride 2 and compute
the same function (the tests check values and gradients against them). They take and
give channels-first ``(C, N, H, W)`` arrays, in which every product of the layers and of
their gradients runs through YNNPACK (:func:`_weights_times_columns`); a model changes
layout once on the way in and once on the way out. Each layer's input gradient is the
other layer's forward computation (:func:`_with_dual_input_gradient`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

# PyTorch's default for Linear and Conv layers: weights and biases ~ U(-b, b), b = 1/sqrt(fan_in).
# The default VAE reaches a 0.7 nats lower test loss after 10 epochs with it than with
# Flax's default (LeCun normal weights, zero biases): 105.58 vs 106.27 nats, mean of
# seeds 0-7 trained for 10 epochs together (experiments/results/vae_seeds8).
kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def bias_init(fan_in: int):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, as PyTorch initialises biases."""
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dense(features: int, fan_in: int, dtype: jnp.dtype | None = None, name: str | None = None) -> nn.Dense:
    """A Dense layer with PyTorch's default initialisation for ``fan_in`` inputs."""
    return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init(fan_in), name=name)


class MLP(nn.Module):
    """Dense layers with ``activation`` (ReLU) between them (and after the last when ``activate_last``).

    ``glorot`` initialises as Burda et al. (2015): Glorot-uniform weights, zero biases;
    otherwise as PyTorch's ``nn.Linear``.
    """

    widths: Sequence[int]
    activate_last: bool = False
    dtype: jnp.dtype | None = None
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    glorot: bool = False

    @staticmethod
    def layer_name(i: int) -> str:
        """The name of the ``i``-th Dense layer's parameters (as linen would name it)."""
        return f"Dense_{i}"

    @property
    def output_layer(self) -> str:
        """The name of the last Dense layer's parameters."""
        return self.layer_name(len(self.widths) - 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.widths):
            name = self.layer_name(i)
            if self.glorot:
                layer = glorot_dense(width, self.dtype, name=name)
            else:
                layer = dense(width, x.shape[-1], self.dtype, name=name)
            x = layer(x)
            if i < len(self.widths) - 1 or self.activate_last:
                x = self.activation(x)
        return x


def glorot_dense(features: int, dtype: jnp.dtype | None = None, name: str | None = None) -> nn.Dense:
    """A Dense layer with Glorot-uniform weights and zero biases."""
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.xavier_uniform(), name=name)


def _patch_columns(x: jax.Array, size: int, stride: int, out_h: int, out_w: int) -> jax.Array:
    """The windows of a padded channels-first ``(C, N, H, W)`` array as the columns of
    ``(size * size * C, N * out_h * out_w)``, each column's entries in the (row, column,
    channel) order of an HWIO kernel's rows."""
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    windows = [x[:, :, i : i + span_h : stride, j : j + span_w : stride] for i in range(size) for j in range(size)]
    return jnp.concatenate(windows, axis=0).reshape(size * size * x.shape[0], -1)


@jax.custom_jvp
def _weights_times_columns(weights: jax.Array, columns: jax.Array) -> jax.Array:
    """``weights^T @ columns``: ``(J, F)`` and ``(J, R)`` -> ``(F, R)``.

    XLA:CPU runs a product through YNNPACK unless its left operand contracts its leading
    axis; such a product goes to XLA's generic dot, 2-3x slower for these shapes. In
    this channels-first form every product of a layer and of its gradient avoids that:
    the forward product takes the small weight matrix transposed once (the barrier keeps
    XLA from folding the transpose back into the product), and the JVP, which ``grad``
    transposes, writes its products with the weights as stored.
    """
    return jax.lax.optimization_barrier(weights.T) @ columns


@_weights_times_columns.defjvp
def _weights_times_columns_jvp(primals, tangents):
    (weights, columns), (weights_dot, columns_dot) = primals, tangents
    product = _weights_times_columns(weights, columns)
    return product, weights.T @ columns_dot + weights_dot.T @ columns


def _conv_2x(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, (2, 2), "SAME")`` on channels-first arrays,
    computed as one matrix product over image patches; its input gradient is
    :func:`conv_transpose_2x`'s forward computation.

    Args:
        x: ``(C_in, N, H, W)`` with H and W even.
        kernel: ``(K, K, C_in, C_out)``, as ``nn.Conv`` stores it.

    Returns:
        ``(C_out, N, H/2, W/2)``.
    """
    k, _, c_in, c_out = kernel.shape
    _, n, h, w = x.shape
    low = max(k - 2, 0) // 2  # 'SAME' for stride 2 pads k - 2 in all, the extra one after
    padded = jnp.pad(x, ((0, 0), (0, 0), (low, max(k - 2, 0) - low), (low, max(k - 2, 0) - low)))
    columns = _patch_columns(padded, k, 2, h // 2, w // 2)
    weights = kernel.reshape(k * k * c_in, c_out).astype(columns.dtype)
    return _weights_times_columns(weights, columns).reshape(c_out, n, h // 2, w // 2)


def _transpose_phase_taps(kernel_size: int) -> tuple[np.ndarray, int, int]:
    """For a stride-2 'SAME' transposed convolution along one axis.

    Output pixel ``2m + a`` is ``sum_u x[m + u - lo] * kernel[taps[a, u]]``, with
    ``taps[a, u] == kernel_size`` meaning a zero tap. Returns ``(taps (2, D), lo, hi)``:
    the input needs ``lo`` pixels of padding before and ``hi`` after.
    """
    # lax.conv_transpose's 'SAME' padding before the dilated input, for stride 2.
    pad = kernel_size - 1 if kernel_size <= 2 else -(-kernel_size // 2)
    entries = [
        (phase, tap, (phase + tap - pad) // 2)
        for phase in (0, 1)
        for tap in range(kernel_size)
        if (phase + tap - pad) % 2 == 0
    ]
    low = min(offset for *_, offset in entries)
    high = max(offset for *_, offset in entries)
    taps = np.full((2, high - low + 1), kernel_size)
    for phase, tap, offset in entries:
        taps[phase, offset - low] = tap
    return taps, -low, max(high, 0)


def _conv_transpose_2x(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_transpose(x, kernel, (2, 2), "SAME")`` on channels-first arrays, computed
    as one matrix product over image patches; its input gradient is :func:`conv_2x`'s
    forward computation.

    The four output phases (even/odd rows and columns) are each an ordinary convolution
    with a sub-kernel; stacking them gives one stride-1 convolution, done here on
    explicit patches. Same result as the dilated convolution, but XLA on CPU computes
    this gradient several times faster.

    Args:
        x: ``(C_in, N, H, W)``.
        kernel: ``(K, K, C_in, C_out)``, as ``nn.ConvTranspose`` stores it.

    Returns:
        ``(C_out, N, 2H, 2W)``.
    """
    k, _, c_in, c_out = kernel.shape
    _, n, h, w = x.shape
    taps, low, high = _transpose_phase_taps(k)
    d = taps.shape[1]
    zero_padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    phases = zero_padded[taps[:, None, :, None], taps[None, :, None, :]]  # (2, 2, D, D, C_in, C_out)
    weights = phases.transpose(2, 3, 4, 0, 1, 5).reshape(d * d * c_in, 4 * c_out)
    padded = jnp.pad(x, ((0, 0), (0, 0), (low, high), (low, high)))
    columns = _patch_columns(padded, d, 1, h, w)
    y = _weights_times_columns(weights.astype(columns.dtype), columns).reshape(2, 2, c_out, n, h, w)
    return y.transpose(2, 3, 4, 0, 5, 1).reshape(c_out, n, 2 * h, 2 * w)


def _dual_kernel(kernel: jax.Array) -> jax.Array:
    """``(K, K, C_in, C_out)`` -> ``(K, K, C_out, C_in)``: flipped in space, channels swapped.
    The input gradient of a stride-2 'SAME' convolution is the transposed convolution of
    the output gradient with this kernel, and the other way round."""
    return kernel[::-1, ::-1].transpose(0, 1, 3, 2)


def _with_dual_input_gradient(forward: Callable, dual: Callable) -> Callable:
    """``forward(x, kernel)``, whose gradient with respect to ``x`` is ``dual(dy, _dual_kernel(kernel))``.

    Differentiated as written, a layer over patches gets its input gradient by summing
    each pixel's share from every window it lies in (9 overlapping windows for a 3x3
    kernel): pads and adds that XLA:CPU runs slowly. The dual layer gathers windows of
    the output gradient instead. Its transpose is the tangent with respect to ``x``, so
    forward-mode derivatives still work, and ``grad``, which transposes the tangent,
    runs the dual layer itself.
    """
    layer = jax.custom_jvp(forward)

    def jvp(primals, tangents):
        (x, kernel), (x_dot, kernel_dot) = primals, tangents
        if isinstance(kernel_dot, SymbolicZero):
            y = forward(x, kernel)
            y_dot = jnp.zeros_like(y)
        else:  # the value and the kernel's tangent from one pass over the patches
            y, y_dot = jax.jvp(lambda k: forward(x, k), (kernel,), (kernel_dot,))
        if not isinstance(x_dot, SymbolicZero):  # no work for the images themselves
            dual_of_y = jax.linear_transpose(
                lambda dy: dual(dy, _dual_kernel(kernel)), jax.ShapeDtypeStruct(y.shape, y.dtype)
            )
            y_dot = y_dot + dual_of_y(x_dot)[0]
        return y, y_dot

    layer.defjvp(jvp, symbolic_zeros=True)
    return layer


conv_2x = _with_dual_input_gradient(_conv_2x, _conv_transpose_2x)
conv_transpose_2x = _with_dual_input_gradient(_conv_transpose_2x, _conv_2x)


class Conv2x(nn.Module):
    """Stride-2 'SAME' convolution: ``nn.Conv(features, (k, k), (2, 2))`` with the same
    parameters, computed by :func:`conv_2x` on channels-first arrays: ``(C_in, N, H, W)``
    -> ``(features, N, H/2, W/2)``. (XLA on CPU runs the gradient of a strided
    convolution several times slower inside ``lax.scan``.)"""

    features: int
    kernel_size: int = 3
    dtype: jnp.dtype | None = None
    operation: ClassVar = staticmethod(conv_2x)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[0], self.features)
        kernel = self.param("kernel", kernel_init, shape)
        bias = self.param("bias", bias_init(math.prod(shape[:3])), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return self.operation(x, kernel) + bias[:, None, None, None]


class ConvTranspose2x(Conv2x):
    """Stride-2 'SAME' transposed convolution: ``nn.ConvTranspose(features, (k, k), (2, 2))``
    with the same parameters, computed by :func:`conv_transpose_2x` on channels-first
    arrays: ``(C_in, N, H, W)`` -> ``(features, N, 2H, 2W)``."""

    operation: ClassVar = staticmethod(conv_transpose_2x)
