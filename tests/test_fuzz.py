"""Property-based fuzzing of the public API (hypothesis): random layers, models, formats,
optimizers, precisions and arguments - odd shapes, zero and huge sizes, wrong dtypes and
types, NaN/inf, bit counts at and beyond their limits, non-contiguous and read-only
arrays, damaged files. Every call must either work or raise one of DOCUMENTED with a
message; anything else (another exception, a crash, a sanitizer report) fails.

LOWBIT_FUZZ_EXAMPLES sets the examples per test (default 40: the short CI run, a few
seconds); examples are then drawn at random instead of the fixed CI sequence. The calls
made are counted and printed at the end (``pytest -s``) and written to the file named by
LOWBIT_FUZZ_REPORT. scripts/sanitize.sh runs this file under ASan + UBSan.
"""
import collections
import io
import json
import os
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lowbit as lb  # noqa: E402

L, F, O = lb.layers, lb.formats, lb.optimizers
DOCUMENTED = (ValueError, TypeError, FileNotFoundError, FloatingPointError, RuntimeError, MemoryError)
EXAMPLES = int(os.environ.get("LOWBIT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize="LOWBIT_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck))
CALLS = collections.Counter()
RAISED = collections.Counter()  # (kind, exception type)


@pytest.fixture(scope="module", autouse=True)
def report_calls():
    yield
    total = sum(CALLS.values())
    print(f"\nfuzz: {total} API calls ({', '.join(f'{k} {v}' for k, v in sorted(CALLS.items()))}); "
          f"{sum(RAISED.values())} raised a documented exception")
    if os.environ.get("LOWBIT_FUZZ_REPORT"):
        with open(os.environ["LOWBIT_FUZZ_REPORT"], "w") as f:
            json.dump({"calls": total, "by_kind": dict(CALLS), "examples_per_test": EXAMPLES,
                       "raised": {f"{k} {t}": n for (k, t), n in RAISED.items()}}, f, indent=1)


def call(kind, fn, *args, **kwargs):
    """fn(*args, **kwargs), or the documented exception it raised (with a message)."""
    CALLS[kind] += 1
    try:
        return fn(*args, **kwargs)
    except DOCUMENTED as e:
        RAISED[kind, type(e).__name__] += 1
        if os.environ.get("LOWBIT_FUZZ_DEBUG"):
            print(f"{kind}: {type(e).__name__}: {str(e)[:150]}")
        assert str(e), f"{kind}: {type(e).__name__} without a message"
        if isinstance(e, RuntimeError):  # only the engine's refusals, never oneDNN's
            assert "primitive" not in str(e) and "could not" not in str(e), f"{kind}: {e}"
        return e


def ok(v):
    return not isinstance(v, BaseException)


# ----------------------------------------------------------------------- values
WEIRD = st.one_of(
    st.sampled_from([0, -1, -7, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64 + 1, -(2 ** 63), 10 ** 30, True, False, None,
                     float("nan"), float("inf"), -float("inf"), 1e300, -0.0, 0.5, "", "same", "x" * 50, (), [],
                     (1, 2, 3), [2, "a"], {"a": 1}, object(), b"\x00", 3 + 1j, np.int64(3), np.float32(np.nan)]),
    st.integers(), st.floats(allow_nan=True), st.text(max_size=8))


@st.composite
def maybe_bad(draw, kwargs):
    """Valid keyword arguments, or (one time in three) with one of them replaced by a
    weird value, or an unknown keyword added."""
    kwargs = dict(kwargs)
    k = draw(st.integers(0, 9))
    if k == 0 and kwargs:
        kwargs[draw(st.sampled_from(sorted(kwargs)))] = draw(WEIRD)
    elif k == 1:
        kwargs[draw(st.sampled_from(["bogus", "units", "filters", "bits", "name", "input_shape"]))] = draw(WEIRD)
    return kwargs


def fmt_strategy():
    """A format, built from drawn (possibly bad) arguments: (class, kwargs)."""
    return st.one_of(
        st.builds(lambda b, m, r, s, o: (F.Fixed, dict(bits=b, msb=m, rounding=r, ste=s, overflow=o)),
                  st.sampled_from([1, 2, 4, 8, 16, 32, 33, 0]), st.one_of(st.integers(-8, 8), st.just("auto"),
                                                                         st.sampled_from([-127, 128])),
                  st.sampled_from(["nearest", "floor", "stochastic"]),
                  st.sampled_from(["identity", "clipped", "hardtanh", "approx_sign", "none"]),
                  st.sampled_from(["saturate", "wrap"])),
        st.builds(lambda b, sym, pc, c: (F.Int, dict(bits=b, symmetric=sym, per_channel=pc, calibration=c)),
                  st.sampled_from([2, 4, 8, 32, 1, 33]), st.booleans(), st.booleans(),
                  st.sampled_from(["minmax", "percentile", "mse"])),
        st.builds(lambda e, m, s: (F.MiniFloat, dict(exp_bits=e, man_bits=m, saturate=s)),
                  st.integers(2, 8), st.sampled_from([0, 1, 3, 7, 10, 23, 24, -1]), st.booleans()),
        st.builds(lambda s, h: (F.Binary, dict(scale=s, hysteresis=h)),
                  st.sampled_from([None, "mean_abs", "channel_mean_abs"]), st.sampled_from([0.0, 0.1, 1.0])),
        st.builds(lambda t: (F.Ternary, dict(threshold=t)), st.one_of(st.none(), st.floats(0, 2))),
        st.sampled_from([(F.Float16, {}), (F.BFloat16, {}), (F.Float32, {})]),
    )


@st.composite
def formats(draw):
    cls, kwargs = draw(fmt_strategy())
    return call("format", cls, **draw(maybe_bad(kwargs)))


@st.composite
def arrays(draw, max_side=6):
    """Arrays of many dtypes, shapes (0-d, empty, odd), values (NaN, inf, huge), and
    memory layouts (non-contiguous, Fortran, read-only)."""
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.integers(0, max_side)) for _ in range(ndim))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64, np.float16, np.int8, np.int64, np.uint8,
                                  np.bool_, np.complex64, object, "U3"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-30, 1e30, 3e38, 255.0]))
    a = np.asarray(rng.normal(size=shape) * scale)
    if draw(st.integers(0, 3)) == 0 and a.size:
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    with np.errstate(all="ignore"):
        a = np.asarray(a.astype(dtype))
    layout = draw(st.integers(0, 4))
    if layout == 1 and a.ndim >= 2:
        a = np.asfortranarray(a)
    elif layout == 2 and a.ndim >= 1:
        a = np.repeat(a, 2, axis=0)[::2]  # strided view, same shape
    elif layout == 3 and a.ndim >= 2:
        a = a.swapaxes(0, -1)
    if draw(st.booleans()):
        a.flags.writeable = False
    return a


# ----------------------------------------------------------------------- layers
def image_layers():
    k = st.integers(1, 4)
    return st.one_of(
        st.builds(lambda f, ks, s, p, d, a, b: (L.Conv2D, dict(filters=f, kernel_size=ks, strides=s, padding=p,
                                                               dilation_rate=d, activation=a, use_bias=b)),
                  st.integers(1, 6), k, st.integers(1, 3), st.sampled_from(["valid", "same", 0, 1, (1, 2)]),
                  st.integers(1, 2), st.sampled_from([None, "relu", "tanh", "sigmoid", "linear"]), st.booleans()),
        st.builds(lambda f, ks, g: (L.Conv2D, dict(filters=f, kernel_size=ks, groups=g, padding="same")),
                  st.integers(1, 8), k, st.integers(1, 4)),
        st.builds(lambda f, fm, role: (L.Conv2D, dict(filters=f, kernel_size=3, padding="same", **{role: fm})),
                  st.integers(1, 4), formats(), st.sampled_from(["weight_format", "input_format", "output_format",
                                                                 "grad_format", "accum_format", "grad_accum_format"])),
        st.builds(lambda p, s, pad: (L.MaxPooling2D, dict(pool_size=p, strides=s, padding=pad)),
                  k, st.one_of(st.none(), st.integers(1, 3)), st.sampled_from(["valid", "same"])),
        st.builds(lambda p: (L.AveragePooling2D, dict(pool_size=p, padding="same")), k),
        st.builds(lambda m, e: (L.BatchNormalization, dict(momentum=m, epsilon=e)), st.floats(0, 1), st.floats(1e-5, 1)),
        st.builds(lambda r: (L.LRN, dict(depth_radius=r)), st.integers(0, 4)),
        st.builds(lambda p: (L.ZeroPadding2D, dict(padding=p)), st.sampled_from([0, 1, 2, (1, 0), ((0, 1), (2, 0))])),
        st.builds(lambda fm: (L.QuantAct, dict(format=fm)), formats()),
        st.builds(lambda b: (L.QuantizedReLU, dict(bits=b)), st.integers(-1, 33)),
        st.builds(lambda s: (L.BinAct, dict(ste=s)), st.sampled_from(["clipped", "identity", "approx_sign"])),
        st.builds(lambda r, m: (L.QuantizedConv2D, dict(filters=2, kernel_size=3, padding="same",
                                                        quantization_resolutions=r, quantization_msb=m)),
                  st.lists(st.integers(0, 34), min_size=3, max_size=3), st.lists(st.integers(-3, 3), min_size=3,
                                                                                 max_size=3)),
        st.sampled_from([(L.ReLU, {}), (L.Tanh, {}), (L.Sigmoid, {}), (L.HardTanh, {}), (L.Dropout, {"rate": 0.3}),
                         (L.GlobalAveragePooling2D, {}), (L.Flatten, {}), (L.Softmax, {})]),
    )


def flat_layers():
    return st.one_of(
        st.builds(lambda u, a, b: (L.Dense, dict(units=u, activation=a, use_bias=b)),
                  st.integers(1, 12), st.sampled_from([None, "relu", "tanh", "softmax", "hard_tanh"]), st.booleans()),
        st.builds(lambda u, fm, role: (L.Dense, dict(units=u, **{role: fm})), st.integers(1, 6), formats(),
                  st.sampled_from(["weight_format", "input_format", "output_format", "grad_format", "accum_format"])),
        st.builds(lambda u: (L.QuantizedDense, dict(units=u)), st.integers(1, 6)),
        st.builds(lambda r: (L.Dropout, dict(rate=r)), st.floats(-0.5, 1.5)),
        st.builds(lambda lo, hi: (L.HardTanh, dict(min_val=lo, max_val=hi)), st.floats(-2, 1), st.floats(-1, 2)),
        st.sampled_from([(L.ReLU, {}), (L.Sigmoid, {}), (L.BatchNormalization, {}), (L.Activation, {"activation": "tanh"}),
                         (L.Flatten, {})]),
    )


@st.composite
def models(draw):
    """A Sequential of drawn layers on a drawn input shape, or the documented exception."""
    image = draw(st.booleans())
    if image:
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    else:
        shape = (draw(st.integers(1, 12)),)
    if draw(st.integers(0, 9)) == 0:
        shape = draw(st.sampled_from([(0,), (2 ** 40,), (3, 2 ** 31, 2 ** 31), (1, -2, 3), (1, 2, 3, 4), ()]))
    specs = draw(st.lists(image_layers(), max_size=4)) if image else []
    if image and draw(st.integers(0, 7)):
        specs.append((L.Flatten, {}))
    specs += draw(st.lists(flat_layers(), max_size=3))
    classes = draw(st.integers(1, 10))
    specs.append((L.Dense, dict(units=classes, activation=draw(st.sampled_from(["softmax", None])))))
    layers = []
    for i, (cls, kwargs) in enumerate(specs):
        if any(isinstance(v, BaseException) for v in kwargs.values()):
            continue  # a format that failed to build
        layer = call("layer", cls, **(kwargs if i == len(specs) - 1 else draw(maybe_bad(kwargs))))
        if ok(layer):
            layers.append(layer)
    model = call("model", lb.Sequential, layers, seed=draw(st.integers(0, 2 ** 64 - 1)))
    if ok(model):
        built = call("build", model.build, shape)
        if not ok(built):
            return None, shape
    return (model if ok(model) else None), shape


def data_for(draw, shape, classes):
    n = draw(st.integers(0, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.uniform(-1, 1, size=(n,) + tuple(max(d, 0) for d in shape if isinstance(d, int) and d < 100))
    y = rng.integers(0, max(classes, 1), n)
    mutation = draw(st.integers(0, 12))
    if mutation == 1:
        x = draw(arrays())
    elif mutation == 2:
        y = draw(arrays())
    elif mutation == 3 and x.size:
        x.flat[0] = np.nan
    elif mutation == 4:
        x = x * 1e30
    elif mutation == 5:
        y = y + classes
    elif mutation == 6:
        y = np.eye(max(classes, 1))[y].astype(np.float32)  # one-hot targets
    elif mutation == 7:
        x = x.astype(np.float64)[..., ::-1]  # negative strides
    elif mutation == 8:
        x = x.tolist()
    elif mutation == 9:
        x.flags.writeable = False
    elif mutation == 10:
        y = y[:-1]
    return x, y


OPTIMIZERS = st.one_of(
    st.builds(lambda lr, m, n: (O.SGD, dict(learning_rate=lr, momentum=m, nesterov=n)),
              st.sampled_from([0.01, 0.1, 0.1, 1e30, 0.0]), st.sampled_from([0.0, 0.9, 0.9, 1.0]), st.booleans()),
    st.builds(lambda lr, b1, b2, e: (O.Adam, dict(learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=e)),
              st.sampled_from([1e-3, 1.0]), st.floats(0, 1), st.floats(0, 1), st.sampled_from([1e-7, 0.0, -1.0])),
    st.builds(lambda lr: (O.RMSprop, dict(learning_rate=lr)), st.sampled_from([1e-3, 10.0])),
    st.builds(lambda lr: (O.Adadelta, dict(learning_rate=lr)), st.sampled_from([1.0, 0.5])),
    st.builds(lambda t, g: (O.Bop, dict(threshold=t, gamma=g)), st.floats(-1, 1), st.floats(-1, 2)),
    st.builds(lambda s, g: (O.SGD, dict(learning_rate=O.StepDecay(0.1, step_size=s, gamma=g))),
              st.integers(1, 3), st.floats(0, 2)),
    st.builds(lambda t: (O.Adam, dict(learning_rate=O.CosineDecay(0.01, t_max=t))), st.integers(1, 4)),
)

PRECISIONS = st.one_of(
    st.none(), st.sampled_from(list(lb.precision.PRESETS) + ["fp8"]),
    st.builds(lambda w, i, ls, acc: call("precision", lb.Precision, weight=w, input=i, loss_scale=ls, accum=acc),
              st.one_of(st.none(), formats()), st.one_of(st.none(), formats()),
              st.sampled_from([None, "dynamic", 128.0]), st.one_of(st.none(), formats())),
)


# ----------------------------------------------------------------------- tests
@FUZZ
@given(st.data())
def test_random_models_train_predict_and_round_trip(tmp_path_factory, data):
    draw = data.draw
    model, shape = draw(models())
    if model is None:
        return
    classes = model.output_shape[0] if model._graph is not None else 1
    cls, kwargs = draw(OPTIMIZERS)
    opt = call("optimizer", cls, **kwargs)
    precision = draw(PRECISIONS)
    if isinstance(precision, BaseException):
        return
    loss = draw(st.sampled_from(["categorical_crossentropy", "mse"] * 3 + ["hinge"]))
    if not ok(call("compile", model.compile, opt if ok(opt) else "sgd", loss, metrics=["accuracy"],
                   precision=precision)):
        return
    x, y = data_for(draw, shape, classes)
    batch = draw(st.sampled_from([1, 3, 32, 0, -1, 2 ** 62, 2.5, True]))
    epochs = draw(st.sampled_from([1, 2, 0, -1]))
    call("fit", model.fit, x, y, batch_size=batch, epochs=epochs, verbose=0,
         validation_data=draw(st.sampled_from([None, (x, y), (x,), "x"])), shuffle=draw(st.booleans()),
         seed=draw(st.sampled_from([None, 0, 2 ** 63, -1, 2 ** 64])))
    call("evaluate", model.evaluate, x, y, batch_size=draw(st.sampled_from([2, 256, 0])))
    p = call("predict", model.predict, x, batch_size=draw(st.sampled_from([1, 5, 256])))
    if ok(p) and ok(call("as_input", lb.model.as_input, x)):
        assert p.shape == (len(np.asarray(x)), classes) and p.dtype == np.float32
    call("compute_gradients", model.compute_gradients, x, y)
    weights = call("get_weights", model.get_weights)
    if ok(weights):
        assert all(np.isfinite(w).all() for w in weights)
        bad = [w.copy() for w in weights]
        if bad:
            k = draw(st.integers(0, len(bad) - 1))
            bad[k] = draw(st.sampled_from([bad[k][..., :1], bad[k].astype(np.float64), bad[k].T, np.float32(1),
                                           bad[k].astype(object)]))
        call("set_weights", model.set_weights, bad)
        call("set_weights", model.set_weights, weights)
    call("summary", model.summary, print_fn=lambda s: None)
    folder = tmp_path_factory.mktemp("m")
    if ok(call("save", model.save, folder / "m.lowbit")):
        again = call("load_model", lb.load_model, folder / "m.lowbit")
        assert ok(again), again
        # both from the saved state (quantizer ranges, stochastic-rounding counters)
        p = call("predict", model.predict, x)
        if ok(p):
            np.testing.assert_array_equal(call("predict", again.predict, x), p, err_msg=repr(
                [lb.serial.encode(layer, "") for layer in model.layers]))


@FUZZ
@given(formats(), arrays(), st.data())
def test_formats_on_arbitrary_arrays(f, a, data):
    if not ok(f):
        return
    q = call("quantize", f.quantize, a, channels=data.draw(st.sampled_from([1, 2, 0, -1, 3])))
    if ok(q):
        assert q.shape == np.shape(a) and q.dtype == np.float32
    g = data.draw(st.one_of(st.just(a), arrays()))
    call("backward", f.backward, a, g)
    call("repr", repr, f)
    call("last_step", lambda: f.last_step)
    call("config", f.config)
    if isinstance(f, F.Fixed):
        call("calibrate", f.calibrate, a, percentile=data.draw(st.sampled_from([99.9, 100, 0, -5, 101, float("nan")])))
    call("msb_from_percentile", F.msb_from_percentile, a, data.draw(st.floats(allow_nan=True)))


@FUZZ
@given(st.data())
def test_constructors_with_arbitrary_arguments(data):
    """Every public constructor with weird arguments: a layer, format, optimizer,
    schedule, constraint or precision, or a documented exception."""
    cls = data.draw(st.sampled_from([
        L.Conv2D, L.Dense, L.MaxPooling2D, L.AveragePooling2D, L.BatchNormalization, L.Activation, L.HardTanh,
        L.LRN, L.Dropout, L.ZeroPadding2D, L.Concatenate, L.QuantAct, L.BinAct, L.QuantizedReLU,
        L.QuantizedConv2D, L.QuantizedDense, F.Fixed, F.Int, F.MiniFloat, F.Binary, F.Ternary, O.SGD, O.Adam,
        O.RMSprop, O.Adadelta, O.Bop, O.StepDecay, O.MultiStepDecay, O.ExponentialDecay, O.CosineDecay,
        lb.constraints.WeightClip, lb.Precision, lb.Input]))
    args = data.draw(st.lists(WEIRD, max_size=4))
    obj = call("constructor", cls, *args)
    if ok(obj) and isinstance(obj, O.Schedule):
        call("schedule", obj, data.draw(st.integers(-5, 2 ** 70)))
    if ok(obj) and isinstance(obj, L.Layer):
        model = call("model", lb.Sequential, [obj])
        if ok(model):
            call("build", model.build, data.draw(st.sampled_from([(4,), (2, 5, 5), (0,), (1, 1, 1)])))


@FUZZ
@given(st.data())
def test_damaged_files_never_change_the_model(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("f")
    m = lb.Sequential([L.Conv2D(2, 3, input_shape=(1, 5, 5), name="c"), L.Flatten(name="f"),
                       L.Dense(3, activation="softmax", name="d")], name="damaged", seed=1)
    m.compile("adam", precision=data.draw(st.sampled_from([None, "fixed8", "fp16", "int8"])))
    x = np.random.default_rng(0).uniform(size=(4, 1, 5, 5)).astype(np.float32)
    m.fit(x, [0, 1, 2, 0], verbose=0)
    kind = data.draw(st.sampled_from(["save", "save_weights", "export_packed"]))
    getattr(m, kind)(folder / "f.lowbit")
    raw = bytearray((folder / "f.lowbit").read_bytes())
    how = data.draw(st.integers(0, 5))
    if how == 0:
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif how == 1:
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif how == 2:
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(max_size=64))
    elif how == 3:
        raw = bytearray(data.draw(st.binary(max_size=512)))
    elif how == 4:  # a valid archive with an edited header
        with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
            members = {n: z.read(n) for n in z.namelist()}
        h = json.loads(members["lowbit.json"])
        key = data.draw(st.sampled_from(sorted(h)))
        h[key] = data.draw(st.one_of(WEIRD.filter(lambda v: isinstance(v, (int, float, str, list, type(None)))),
                                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)))
        members["lowbit.json"] = json.dumps(h).encode()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for n, b in members.items():
                z.writestr(n, b)
        raw = bytearray(out.getvalue())
    (folder / "bad.lowbit").write_bytes(bytes(raw))
    before = m.get_weights()
    got = call("load_weights", m.load_weights, folder / "bad.lowbit")
    if not ok(got):
        assert isinstance(got, ValueError) and str(folder / "bad.lowbit") in str(got)
        for a, b in zip(m.get_weights(), before):
            np.testing.assert_array_equal(a, b)
    loaded = call("load_model", lb.load_model, folder / "bad.lowbit")
    if not ok(loaded):
        assert isinstance(loaded, ValueError), loaded
    packed = call("load_packed", lb.load_packed, folder / "bad.lowbit")
    if not ok(packed):
        assert isinstance(packed, ValueError) and str(folder / "bad.lowbit") in str(packed), packed
    else:
        call("predict", packed.predict, x)
    call("predict", m.predict, x)


@FUZZ
@given(st.data())
def test_dataset_readers_on_random_files(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("d")
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for i, name in enumerate(names):
        n, h, w = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
        images = i % 2 == 0
        head = (0x803 if images else 0x801).to_bytes(4, "big") + b"".join(
            d.to_bytes(4, "big") for d in ((n, h, w) if images else (n,)))
        body = bytes(n * h * w if images else n)
        raw = data.draw(st.one_of(st.just(head + body), st.binary(max_size=40),
                                  st.just((head + body)[:data.draw(st.integers(0, len(head + body)))])))
        gz = data.draw(st.booleans())
        if gz:
            import gzip
            raw = data.draw(st.sampled_from([gzip.compress(raw), raw]))
        (folder / (name + (".gz" if gz else ""))).write_bytes(raw)
    lb.datasets.clear_cache()
    call("mnist", lb.datasets.mnist, root=folder)
    cifar = folder / "cifar"
    cifar.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (cifar / name).write_bytes(data.draw(st.one_of(st.binary(max_size=64), st.just(bytes(3073)))))
    call("cifar10", lb.datasets.cifar10, root=cifar)
    call("pad_to", lb.datasets.pad_to, data.draw(arrays()), data.draw(st.one_of(st.integers(-2, 12), WEIRD)))
    call("to_rgb", lb.datasets.to_rgb, data.draw(arrays()))
    call("missing", lb.datasets.mnist, root=folder / "nope")


def test_atheris_reader_target_short_run(tmp_path):
    """scripts/fuzz_readers.py (coverage-guided, libFuzzer) for a few thousand inputs;
    skipped where atheris is not installed (pip install atheris)."""
    pytest.importorskip("atheris")
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(here, "..", "scripts", "fuzz_readers.py"), "-runs=3000",
                        f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Done 3000 runs" in r.stderr
    CALLS["atheris reader inputs"] += 3000
