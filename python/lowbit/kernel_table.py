"""Which kernels a model runs: per layer and pass, the implementation oneDNN picked on
this CPU (its ``impl_info_str``: ``brg:avx512_core``, ``jit:avx2``, ``gemm:jit``,
``ref:any``, ...), or lowbit's own loops where they replace a primitive.

    >>> print(model.kernels())
    Layer (op)              Pass              Implementation
    conv2d (conv2d)         forward           brg:avx512_core
    ...
"""
import numpy as np


class KernelTable(list):
    """Rows ``{"layer", "op", "pass", "impl"}``; printing shows them as a table."""

    def __init__(self, rows, cpu_isa=""):
        super().__init__(rows)
        self.cpu_isa = cpu_isa

    def impls(self):
        """The distinct implementations in the table, in order of appearance."""
        return list(dict.fromkeys(r["impl"] for r in self))

    def __str__(self):
        head = ("Layer (op)", "Pass", "Implementation")
        rows = [head] + [(f"{r['layer']} ({r['op']})", r["pass"], r["impl"]) for r in self]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        rule = "-" * max(len(s) for s in lines)
        return "\n".join([rule, lines[0], rule, *lines[1:], rule, f"oneDNN dispatches to: {self.cpu_isa}"])


def kernel_table(model, batch_size=None):
    """The kernels of `model` at `batch_size`: an inference forward over a zero batch
    builds and records them first when a batch size is given or nothing ran yet (oneDNN
    may pick a different kernel for another batch size)."""
    from . import _core

    model._require_built()
    g = model._graph
    has_ran = any(g.node_kernels(n) for _, nodes in model._layers for n in nodes)
    if batch_size is not None or not has_ran:
        n = 32 if batch_size is None else int(batch_size)
        if n < 1:
            raise ValueError(f"kernels: expected batch_size >= 1, got {batch_size}")
        g.forward(np.zeros((n, *model.input_shape), np.float32), False)
    rows = [{"layer": layer.name, "op": g.node_kind(n), "pass": p, "impl": impl}
            for layer, nodes in model._layers for n in nodes for p, impl in g.node_kernels(n)]
    return KernelTable(rows, _core.build_info()["onednn_cpu_isa"])
