"""What a compiled step copies inside its loops, read from XLA's program text
(``jax.jit(f).lower(...).compile().as_text()``).

A copy of a large array inside a ``lax.scan`` body runs at every step of the scan; in the supernet's
backward pass such copies once cost more than the ops (README, Benchmarks).
"""

from __future__ import annotations

import math
import re

BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}


def loop_copies(program: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, shape) of every ``copy`` instruction in a loop body of the program, each body read once
    (not once per iteration)."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", program))
    copies, computation = [], None
    for line in program.splitlines():
        header = re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            computation = header.group(1)
            continue
        copy = re.search(r"= (\w+)\[([\d,]*)\]\S* copy\(", line)
        if copy and computation in bodies:
            copies.append((copy.group(1), tuple(int(d) for d in copy.group(2).split(",") if d)))
    return copies


def megabytes(arrays: list[tuple[str, tuple[int, ...]]]) -> float:
    """Total size of (dtype, shape) arrays in MB (dtypes not in ``BYTES`` count 4 bytes an element)."""
    return sum(BYTES.get(dtype, 4) * math.prod(shape) for dtype, shape in arrays) / 1e6
