"""Inference fusions of predict/evaluate: a ReLU applied by the batch norm or add before it,
or run in place over its producer's output, and a quantizer node skipped in front of a kernel
that quantizes its input the same way itself (a BinAct before an xnor-popcount conv, a Fixed
QuantAct before an int8 conv), give exactly the unfused network's values."""
import numpy as np
import pytest

import lowbit as lb
from lowbit import layers as L

FOLDED, IN_PLACE, PRODUCER, QUANT_PASSED = 1, 2, 3, 4


def _moved(m):
    # every vector parameter (biases, batch-norm gamma, beta and running statistics) away
    # from its initial 0 / 1, so that the fused primitives have work; variances stay > 0
    rng = np.random.default_rng(5)
    m.set_weights([v if v.ndim != 1 else rng.uniform(0.5, 1.5, v.shape).astype(np.float32) - 0.4 * (k % 2)
                   for k, v in enumerate(m.get_weights())])
    return m


@pytest.mark.parametrize("precision", [None, "int8", "bf16", "binary", "w1a8"])
def test_resnet_predict_and_evaluate_equal_the_unfused_forward(precision):
    m = lb.models.resnet20((3, 16, 16), num_classes=10, seed=0, precision=precision, bn_momentum=0.9)
    x = np.random.default_rng(1).standard_normal((24, 3, 16, 16)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 10, 24)
    m.compile(lb.optimizers.SGD(0.01))
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)  # running statistics, quantizer ranges
    g = m._graph
    plan = g.inference_fusions()
    kinds = [g.node_kind(i) for i in range(len(plan))]
    # every block's ReLU after batch norm or add is folded into it (the binary network has
    # none: a sign after a ReLU would be constant)
    folded = [i for i, p in enumerate(plan) if p == FOLDED]
    assert all(kinds[i] == "relu" for i in folded)
    assert {kinds[g.node_inputs(i)[0]] for i in folded} == (set() if precision == "binary" else {"batch_norm", "add"})
    assert all(plan[g.node_inputs(i)[0]] == PRODUCER for i in folded)
    # S1's networks: every BinAct / 8-bit QuantAct feeds one block conv, whose xnor / int8
    # kernel binarizes / encodes the input itself
    passed = [i for i, p in enumerate(plan) if p == QUANT_PASSED]
    assert len(passed) == (18 if precision in ("binary", "w1a8") else 0)
    assert all(kinds[i] == "quantize" for i in passed)
    unfused = g.forward(x, False)  # forward: no fusions (calibration reads its activations)
    np.testing.assert_array_equal(m.predict(x, batch_size=8), unfused)
    ev = m.evaluate(x, y, batch_size=24)
    p = unfused
    assert ev["loss"] == pytest.approx(float(np.mean(-np.log(p[np.arange(24), y]))), rel=1e-5)
    # and the training forward after a fused predict is the unfused one again
    np.testing.assert_array_equal(g.forward(x, False), unfused)


def test_relu_after_other_ops_runs_in_place_and_shared_outputs_are_left_alone():
    inp = L.Input((8, 6, 6))
    c = L.Conv2D(16, 3, padding="same", activation="relu")(inp)  # conv -> relu in one layer: in place
    b = L.BatchNormalization()(c)
    r1 = L.Activation("relu")(b)  # b has two readers: not folded, not in place
    s = L.Add()([b, r1])
    d = L.Activation("relu")(L.Dense(5)(L.Flatten()(s)))
    m = _moved(lb.Model(inp, d, seed=0))
    g = m._graph
    plan = g.inference_fusions()
    kinds = [g.node_kind(i) for i in range(len(plan))]
    assert [k for k, p in zip(kinds, plan) if p == IN_PLACE] == ["relu", "relu"]  # conv's, dense's
    assert plan[kinds.index("batch_norm")] == 0 and plan[kinds.index("add")] == 0
    relus = [i for i, k in enumerate(kinds) if k == "relu"]
    assert [plan[i] for i in relus] == [IN_PLACE, 0, IN_PLACE]
    x = np.random.default_rng(3).standard_normal((4, 8, 6, 6)).astype(np.float32)
    unfused = g.forward(x, False)
    np.testing.assert_array_equal(m.predict(x), unfused)
    assert (unfused == 0).any()  # the last ReLU had something to clip


def test_batch_norm_relu_fused_on_plain_and_blocked_layouts():
    for channels in (6, 32):  # 32: nChw16c inside the network
        m = _moved(lb.Sequential([L.Conv2D(channels, 3, input_shape=(3, 9, 9)), L.BatchNormalization(),
                                  L.Activation("relu"), L.Flatten(), L.Dense(3)], seed=0))
        g = m._graph
        assert g.inference_fusions().count(FOLDED) == 1
        x = np.random.default_rng(4).standard_normal((5, 3, 9, 9)).astype(np.float32)
        np.testing.assert_array_equal(m.predict(x), g.forward(x, False))


def test_the_plan_follows_the_output():
    # a network cut at its batch norm: the ReLU after it is no longer run
    m = lb.Sequential([L.Dense(4, input_shape=(3,)), L.BatchNormalization(), L.Activation("relu")], seed=0)
    m.build()
    g = m._graph
    assert g.inference_fusions().count(FOLDED) == 1
    bn = [g.node_kind(i) for i in range(len(g.inference_fusions()))].index("batch_norm")
    g.set_output(bn)
    assert g.inference_fusions()[bn] == 0
    x = np.random.default_rng(6).standard_normal((7, 3)).astype(np.float32)
    out = m._graph.predict(x, 7)
    assert (out < 0).any()  # batch norm's own output, not clipped


@pytest.mark.parametrize("fmt", [lb.formats.Fixed(8, msb=2), lb.formats.Binary(), lb.formats.Int(8),
                                 lb.formats.Binary(scale="mean_abs"), lb.formats.MXFP8(),
                                 lb.formats.Ternary()])
def test_quantizer_nodes_on_blocked_activations_equal_the_format_on_nchw(fmt):
    # layout-free formats quantize the nChw16c activations of a 32-channel conv where they
    # are; the others (sums in a statistic, block axes) get NCHW: both equal the format
    # applied to the NCHW array
    inp = L.Input((3, 8, 8))
    c = L.Conv2D(32, 3, padding="same")(inp)
    q = L.QuantAct(fmt)(c)
    out = L.Dense(4)(L.Flatten()(q))
    m = lb.Model(inp, out, seed=0)
    x = np.random.default_rng(7).standard_normal((6, 3, 8, 8)).astype(np.float32)
    g = m._graph
    m.predict(x)
    kinds = [g.node_kind(i) for i in range(len(g.inference_fusions()))]
    z = g.activation(kinds.index("conv2d"))  # NCHW copy of the last forward's conv output
    want = fmt.quantize(z, axis=1) if isinstance(fmt, lb.formats.MX) else fmt.quantize(z)  # blocks along channels
    np.testing.assert_array_equal(g.activation(kinds.index("quantize")), want)
