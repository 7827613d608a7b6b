"""model.summary(): rows, totals, bits and memory per precision, MACs by precision,
views (text, HTML, pandas)."""
import sys
import types

import numpy as np
import pytest

import lowbit as lb

L, F, M = lb.layers, lb.formats, lb.models

# LeNet on 28x28x1 by hand: (name, output shape, kernel params, bias params, MACs per sample)
LENET = [("Conv2D", (32, 28, 28), 32 * 25, 32, 32 * 28 * 28 * 25),
         ("MaxPooling2D", (32, 14, 14), 0, 0, 0),
         ("Conv2D", (48, 10, 10), 48 * 32 * 25, 48, 48 * 10 * 10 * 32 * 25),
         ("MaxPooling2D", (48, 5, 5), 0, 0, 0),
         ("Flatten", (1200,), 0, 0, 0),
         ("Dense", (256,), 1200 * 256, 256, 1200 * 256),
         ("Dense", (84,), 256 * 84, 84, 256 * 84),
         ("Dense", (10,), 84 * 10, 10, 84 * 10)]


def test_lenet_rows_and_totals(capsys):
    m = M.lenet(seed=0)
    t = m.summary()
    printed = capsys.readouterr().out
    assert "369,174" in printed and "Layer (type)" in printed
    assert [r["type"] for r in t.rows] == [row[0] for row in LENET]
    for r, (_, shape, k, b, macs) in zip(t.rows, LENET):
        assert r["output_shape"] == shape
        assert r["params"] == r["trainable_params"] == k + b
        assert r["memory_bytes"] == 4 * (k + b)
        assert r["macs"] == macs
        assert r["bits"] == (32 if k else None)
        assert r["mac_bits"] == (32 if macs else None)
        assert set(r) == set(lb.summary.COLUMNS)
    total_macs = sum(row[4] for row in LENET)
    assert t.totals["params"] == t.totals["trainable_params"] == 369_174
    assert t.totals["non_trainable_params"] == 0
    assert t.totals["memory_bytes"] == t.totals["float32_bytes"] == 4 * 369_174
    assert t.totals["macs"] == total_macs == 4_796_744
    assert t.totals["macs_by_bits"] == {32: total_macs}
    assert t.totals["params_by_bits"] == {32: 369_174}
    assert t.precision == "fp32" and t.name == "lenet"


def test_print_fn_none_prints_nothing_and_str_is_the_table(capsys):
    m = M.simple_cnn(seed=0)
    t = m.summary(print_fn=None)
    assert capsys.readouterr().out == ""
    lines = []
    assert isinstance(m.summary(print_fn=lines.append), lb.summary.Summary)
    assert lines == [str(t)] and repr(t) == str(t)
    assert "Total params: 20,410" in str(t) and "MACs per sample: 93,288" in str(t)


def test_alexnet_netadapt_macs_are_netadapts_figures():
    t = M.alexnet_netadapt(num_classes=10, seed=0).summary(print_fn=None)
    assert t.totals["macs"] == 710_133_440  # S1 Figure 38a, iteration 0
    pruned = M.alexnet_netadapt(num_classes=10, seed=0, filters=(48, 160, 336, 184, 224, 1952, 4096))
    assert pruned.summary(print_fn=None).totals["macs"] == 454_945_680  # after 13 iterations


def binarised(row):
    return row["bits"] == 1


def binary_bytes(row, k):
    """1-bit codes, each filter's (conv) or unit's (dense) reduction axis padded to whole
    bytes, and the fp32 mean-|w| scales: per filter of a conv, per tensor of a dense kernel."""
    rows = row["output_shape"][0]
    conv = row["type"] == "Conv2D"
    return rows * -(-(k // rows) // 8) + 4 * (rows if conv else 1)


def test_binary_memory_is_a_32nd_for_binarised_layers():
    m = M.lenet(seed=0, precision="binary")
    t = m.summary(print_fn=None)  # before compile: the default precision
    assert t.precision == "binary"
    kernels = [r for r in t.rows if r["mac_bits"] is not None]
    # binary preset: the first layer keeps a float input, the last layer stays full precision
    assert [r["bits"] for r in kernels] == [1, 1, 1, 1, 32]
    assert [r["mac_bits"] for r in kernels] == [32, 1, 1, 1, 32]
    for r, (_, _, k, b, _) in zip(t.rows, LENET):
        if binarised(r):
            assert r["memory_bytes"] == binary_bytes(r, k) + 4 * b  # packed kernel and scales, float32 bias
            if k >= 500 * b:  # kernel-dominated (float bias and scales < 10 % of the packed size): ~1/32
                ratio = r["memory_bytes"] / (4 * r["params"])
                assert 1 / 32 <= ratio < 1 / 29, (r["name"], ratio)
    binary_kernels = sum(k for r, (_, _, k, _, _) in zip(t.rows, LENET) if binarised(r))
    assert t.totals["params_by_bits"] == {32: 369_174 - binary_kernels, 1: binary_kernels}
    packed = sum(binary_bytes(r, k) for r, (_, _, k, _, _) in zip(t.rows, LENET) if binarised(r))
    assert t.totals["memory_bytes"] == packed + 4 * (369_174 - binary_kernels)
    assert t.totals["float32_bytes"] / t.totals["memory_bytes"] > 25
    assert t.totals["macs_by_bits"] == {32: LENET[0][4] + LENET[7][4], 1: LENET[2][4] + LENET[5][4] + LENET[6][4]}
    assert sum(t.totals["macs_by_bits"].values()) == t.totals["macs"]
    m.compile("adam")  # the compiled precision gives the same table
    assert m.summary(print_fn=None).rows == t.rows
    m.compile("adam", precision="fp32")
    assert m.summary(print_fn=None).totals["macs_by_bits"] == {32: t.totals["macs"]}


@pytest.mark.parametrize("preset,wbits,mbits", [("fp16", 16, 16), ("bf16", 16, 16), ("fixed16", 16, 16),
                                               ("fixed8", 8, 8), ("int8", 8, 8), ("fw16bw32", 16, 16),
                                               ("w1a8", 1, 8)])
def test_bits_follow_the_compiled_precision(preset, wbits, mbits):
    m = M.lenet(seed=0)
    m.compile("adam", precision=preset)
    t = m.summary(print_fn=None)
    kernels = [r for r in t.rows if r["mac_bits"] is not None]
    exempt = lb.precision.get(preset)
    first_in = 32 if exempt.exempt_first else mbits
    last = 32 if exempt.exempt_last else None
    assert kernels[1]["bits"] == kernels[2]["bits"] == wbits
    assert kernels[1]["mac_bits"] == kernels[2]["mac_bits"] == mbits
    assert kernels[0]["mac_bits"] == max(wbits, first_in)
    assert kernels[-1]["bits"] == (last or wbits)
    conv2 = kernels[1]
    scales = 48 if preset in ("int8", "w1a8") else 0  # fp32 max|w| (Int) or mean |w| (Binary) per filter
    assert conv2["memory_bytes"] == 48 * 32 * 25 * wbits / 8 + 4 * 48 + 4 * scales


def test_layer_formats_and_quantized_activations_set_the_mac_bits():
    inp = lb.Input((3, 8, 8))
    x = L.Conv2D(4, 3, weight_format=F.MiniFloat(4, 3), input_format="fp16")(inp)  # 8-bit weights, fp16 input
    x = L.BinAct()(x)
    x = L.MaxPooling2D(2)(x)  # keeps the +-1 grid
    x = L.Conv2D(4, 1, weight_format=F.Binary())(x)  # binary x binary
    x = L.QuantizedReLU(4)(x)
    x = L.Conv2D(4, 1, weight_format=F.Ternary())(x)  # 2-bit weights x 4-bit activations
    x = L.QuantizedReLU(3)(x)
    x = L.Flatten()(x)
    x = L.Dense(2, weight_format=F.Binary())(x)  # binary weights x 3-bit activations
    x = L.ReLU()(x)
    x = L.Dense(2, weight_format=F.Fixed(6, msb=0))(x)  # after a float ReLU: 32-bit input
    t = lb.Model(inp, x, seed=0).summary(print_fn=None)
    kernels = [r for r in t.rows if r["mac_bits"] is not None]
    assert [r["bits"] for r in kernels] == [8, 1, 2, 1, 6]
    assert [r["mac_bits"] for r in kernels] == [16, 1, 4, 3, 32]
    assert kernels[2]["memory_bytes"] == 4 * 4 * 2 / 8 + 4 + 4 * 4  # 2-bit codes, fp32 scale, bias


def test_explicit_layer_format_overrides_the_precision():
    m = lb.Sequential([L.Conv2D(4, 3, weight_format=F.Fixed(4, msb=0)), L.Flatten(), L.Dense(3)], seed=0)
    m.build((1, 6, 6))
    m.compile("sgd", precision="fp16")
    rows = [r for r in m.summary(print_fn=None).rows if r["mac_bits"]]
    assert [r["bits"] for r in rows] == [4, 16] and [r["mac_bits"] for r in rows] == [16, 16]


def test_resnet20_batch_norm_rows():
    t = M.resnet20(seed=0).summary(print_fn=None)
    bn = [r for r in t.rows if r["type"] == "BatchNormalization"]
    assert len(bn) == 19
    assert bn[0]["params"] == 64 and bn[0]["trainable_params"] == 32 and bn[0]["bits"] == 32
    assert t.totals["non_trainable_params"] == 1_376
    adds = [r for r in t.rows if r["type"] == "Add"]
    assert len(adds) == 9 and all(r["params"] == 0 and r["macs"] == 0 for r in adds)


def test_html_repr_escapes_and_holds_every_row():
    inp = lb.Input((4,))
    out = L.Dense(2, name="<dense & co>")(inp)
    t = lb.Model(inp, out, seed=0).summary(print_fn=None)
    h = t._repr_html_()
    assert h.count("<tr>") == 1 + len(t.rows)
    assert "&lt;dense &amp; co&gt;" in h and "<dense & co>" not in h
    assert "Total params: 10" in h


def test_to_pandas(monkeypatch):
    t = M.simple_cnn(seed=0).summary(print_fn=None)
    try:
        import pandas  # noqa: F401
    except ImportError:  # a stand-in records what a DataFrame would be built from
        class DataFrame:
            def __init__(self, data, columns):
                self.data, self.columns, self.attrs = data, columns, {}
        monkeypatch.setitem(sys.modules, "pandas", types.SimpleNamespace(DataFrame=DataFrame))
    df = t.to_pandas()
    assert list(df.columns) == list(lb.summary.COLUMNS)
    assert df.attrs["totals"]["params"] == 20_410
    if hasattr(df, "data"):
        assert df.data == t.rows
    else:
        assert df["params"].sum() == 20_410 and len(df) == len(t.rows)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        t.to_pandas()


def test_summary_of_an_unbuilt_model_raises():
    with pytest.raises(ValueError, match="not built"):
        lb.Sequential([L.Dense(3)]).summary()


def test_readable_bytes():
    rb = lb.summary.readable_bytes
    assert rb(512) == "512 B" and rb(1536) == "1.50 KiB" and rb(143_233_410 * 4) == "546.39 MiB"


def test_block_format_memory_counts_the_scales():
    """MXFP4 kernels: 4 bits per weight plus an 8-bit scale per block of 32 along each
    filter's C kh kw (conv) or each unit's inputs (dense); NVFP4 adds the tensor scale."""
    m = lb.models.lenet(seed=0)
    m.compile(lb.optimizers.Adam(1e-3), precision="mxfp4")
    t = m.summary(print_fn=None)
    conv2 = [r for r in t.rows if r["type"] == "Conv2D"][1]  # 48 filters over 32 x 5 x 5 = 800 inputs
    assert conv2["memory_bytes"] == (48 * 800 * 4 + 48 * 25 * 8) / 8 + 4 * 48
    dense1 = [r for r in t.rows if r["type"] == "Dense"][0]  # (1200, 256): 38 blocks per unit (last of 16)
    assert dense1["memory_bytes"] == (1200 * 256 * 4 + 256 * 38 * 8) / 8 + 4 * 256
