"""Where inference time goes: per layer, the wall time of its nodes inside a whole
``predict`` call (``Model.profile``), so that the rows add up to the network - unlike
layers timed one by one, which each pay a call's fixed cost and start with cold caches.

    >>> print(model.profile(x, repeat=20))
    Layer (ops)                  Output shape      ms      %
    conv2d_1 (conv2d, relu)      (32, 28, 28)   0.412   38.1
    ...
    layers                                      1.043   96.5
    per-call overhead                           0.038    3.5
    predict                                     1.081
"""
import time

import numpy as np


class Profile(list):
    """Rows ``{"layer", "kind", "ops", "output_shape", "ms"}`` (median over the repeats of
    the layer's time in each call), in the model's layer order. ``overhead_ms``: the
    median of each call's wall time minus its layers' (input checks, the input's and
    output's copies); ``call_ms``: the median wall time of a whole call."""

    def __init__(self, rows, call_ms, overhead_ms, batch, repeat, cpu, threads):
        super().__init__(rows)
        self.call_ms, self.overhead_ms = call_ms, overhead_ms
        self.batch, self.repeat, self.cpu, self.threads = batch, repeat, cpu, threads

    @property
    def layers_ms(self):
        return float(sum(r["ms"] for r in self))

    def by_layer(self):
        """{layer name: ms}"""
        return {r["layer"]: r["ms"] for r in self}

    def __str__(self):
        total = self.layers_ms + self.overhead_ms

        def pct(ms):
            return f"{100 * ms / total:.1f}" if total > 0 else "-"
        head = ("Layer (ops)", "Output shape", "ms", "%")
        rows = [(f"{r['layer']} ({', '.join(r['ops'])})", str(tuple(r["output_shape"])), f"{r['ms']:.3f}",
                 pct(r["ms"])) for r in self]
        foot = [("layers", "", f"{self.layers_ms:.3f}", pct(self.layers_ms)),
                ("per-call overhead", "", f"{self.overhead_ms:.3f}", pct(self.overhead_ms)),
                ("predict", "", f"{self.call_ms:.3f}", "")]
        widths = [max(len(r[i]) for r in [head] + rows + foot) for i in range(4)]

        def line(r):
            return "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),
                              r[3].rjust(max(widths[3], 5))]).rstrip()
        rule = "-" * len(line(head))
        return "\n".join([rule, line(head), rule, *map(line, rows), rule, *map(line, foot), rule,
                          f"batch {self.batch}, median of {self.repeat} calls, {self.threads} thread(s); "
                          f"CPU: {self.cpu}"])

    def plot(self, ax=None, top=None, title=None, path=None):
        """Horizontal bars of ms per layer (the ``top`` slowest if given), CPU in the title."""
        from .plots import _finish, _pyplot
        rows = sorted(self, key=lambda r: r["ms"], reverse=True)[:top] if top else list(self)
        fig = None
        if ax is None:
            fig, ax = _pyplot().subplots(figsize=(7, 0.25 * len(rows) + 1.2))
        ax.barh([f"{r['layer']} ({', '.join(r['ops'])})" for r in rows], [r["ms"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"ms per call (batch {self.batch}, median of {self.repeat})")
        ax.grid(axis="x", alpha=0.3)
        if fig is not None:
            _finish(fig, title or f"predict: {self.layers_ms:.2f} ms in layers + {self.overhead_ms:.2f} ms per call",
                    path, self.cpu)
        return ax


def profile(model, x=None, batch_size=None, repeat=10, flush_mb=0):
    """See ``Model.profile``."""
    from . import _core
    from .experiments import cpu_model
    if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
        raise ValueError(f"profile: expected repeat >= 1, got {repeat!r}")
    if not isinstance(flush_mb, (int, float, np.integer, np.floating)) or not flush_mb >= 0:
        raise ValueError(f"profile: expected flush_mb >= 0, got {flush_mb!r}")
    scratch = np.empty(int(flush_mb * 2 ** 20) // 8) if flush_mb else None
    from .model import _batch_size
    if x is None:
        model._require_built()
        n = _batch_size(32 if batch_size is None else batch_size, "profile")
        x = np.random.default_rng(0).standard_normal((n, *model.input_shape)).astype(np.float32)
    batch = len(x) if batch_size is None else batch_size
    model.predict(x, batch_size=batch)  # warm-up: primitives, buffers, calibration; checks the arguments
    node_s, call_s = [], []
    with model._lock:
        g = model._graph
        for k in range(int(repeat)):
            if scratch is not None:
                scratch.fill(k)  # evicts the caches: a cold-cache call
            t = time.perf_counter()
            xs, _ = model._prepare(x, None, "profile")
            _, s = g.predict_timed(xs, int(batch))
            call_s.append(time.perf_counter() - t)
            node_s.append(s)
        node_s = np.asarray(node_s)
        rows = [{"layer": layer.name, "kind": type(layer).__name__, "ops": [g.node_kind(i) for i in nodes],
                 "output_shape": tuple(g.node_shape(nodes[-1])),
                 "ms": float(np.median(node_s[:, nodes].sum(axis=1))) * 1e3 if nodes else 0.0}
                for layer, nodes in model._layers]
    overhead = float(np.median(np.asarray(call_s) - node_s.sum(axis=1))) * 1e3
    return Profile(rows, float(np.median(call_s)) * 1e3, max(overhead, 0.0), int(batch), int(repeat), cpu_model(),
                   int(_core.build_info()["openmp_threads"]))
