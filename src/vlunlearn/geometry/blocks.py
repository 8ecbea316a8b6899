"""Row blocks for chains of elementwise passes over a large ``(B1, B2)`` matrix.

On a CPU, every pass of a chain such as ``clamp_ -> log1p_ -> mul_`` over a 4096 x 4096
float32 matrix (64 MiB) streams it through main memory. Run the chain on blocks of rows
that fit in a core's L2 cache instead, and only the first touch goes to memory: the
contrastive loss at batch 4096 (forward and backward) ran 1.2x faster with cosine similarity
and 1.4x faster with Lorentz distance than with the whole matrix as one block (2 cores).
On accelerators the whole matrix is one block, since a loop of small kernels would only
add launches.
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 17
"""Elements per block on a CPU: 512 KiB of float32, so that a block and its one temporary
fit in a 1-2 MiB L2 cache."""


def row_blocks(n_rows: int, n_cols: int, device: torch.device) -> list[slice]:
    """Slices covering ``range(n_rows)`` in blocks of about :data:`BLOCK_ELEMENTS` elements of
    a ``(n_rows, n_cols)`` matrix on ``device`` (one block off the CPU)."""
    step = n_rows if device.type != "cpu" else max(1, BLOCK_ELEMENTS // max(n_cols, 1))
    return [slice(start, start + step) for start in range(0, n_rows, max(step, 1))]
