"""Tests of ``python -m export --quantize``: the LiteRT dynamic/int8 files and the int8 ONNX model,
their runtime without TensorFlow, the robustness protocol (transfer, Square through the file's own
runtime, the per-example minimum) and bad input.

One tiny ``small_cnn`` (width 4, two epochs on 1,000 mnist5k digits, not adversarially trained, so
the attacks finish fast) is exported once with ``--quantize=dynamic,int8`` (module fixture
``bundle``, a few minutes on 2 shared cores: its tests are marked slow); the protocol runs on a few
images with a small query budget. The bad-input tests point ``--out`` at a stand-in previous export
(a directory with ``model_card.json``) and check it is left byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from ardir_tf import data, models
from ardir_tf.attacks import primitives
from export import quantize, quantized_eval, runtimes
from dir_digest import tree_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPSILON = 0.3
EVAL_EXAMPLES = 24
QUERIES = 30
UNSEEN = slice(500, 628)  # held-out digits the export never used


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


def train_tiny(path, extra_layer=None):
    x, y = data.load_arrays("mnist5k", "train", examples=1000)
    keras.utils.set_random_seed(0)
    model = models.get("small_cnn", 10, (28, 28, 1), width=4)
    if extra_layer is not None:
        model = keras.Model(model.inputs, extra_layer(model.outputs[0]), name="small_cnn_erf")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=50, epochs=2, verbose=0)
    os.makedirs(path, exist_ok=True)
    model.save(os.path.join(path, "model.keras"))
    settings = {"method": "standard", "dataset": "mnist5k", "model": "small_cnn", "model_options": "width=4",
                "epsilon": EPSILON, "norm": "linf"}
    with open(os.path.join(path, "settings.json"), "w") as f:
        json.dump(settings, f)
    return model


@pytest.fixture(scope="module")
def mnist_test():
    return data.load_arrays("mnist5k", "test")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train_tiny(str(path))
    return path


@pytest.fixture(scope="module")
def bundle(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "bundle"
    proc = run(["-m", "export", f"--model={workdir / 'model.keras'}", f"--out={out}", "--quantize=dynamic,int8",
                "--verify_examples=64", "--examples=2", "--calibration_examples=100",
                f"--quantize_eval_examples={EVAL_EXAMPLES}", f"--square_queries={QUERIES}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


# ---------------------------------------------------------------------------------- unit checks
def test_parse_modes():
    assert quantize.parse_modes("int8,dynamic") == ("dynamic", "int8")
    assert quantize.parse_modes("") == () and quantize.parse_modes(None) == () and quantize.parse_modes("none") == ()
    assert quantize.variants(("int8",)) == ["litert_int8", "onnx_int8"]
    with pytest.raises(ValueError, match="unknown quantization mode 'int4'"):
        quantize.parse_modes("dynamic,int4")


def test_check_calibration():
    good = np.zeros((12, 28, 28, 1), np.float32)
    assert quantize.check_calibration(good, (28, 28, 1), "test").shape == good.shape
    with pytest.raises(ValueError, match=r"shape \[12, 32, 32, 3\]; the model takes \[N, 28, 28, 1\]"):
        quantize.check_calibration(np.zeros((12, 32, 32, 3)), (28, 28, 1), "test")
    with pytest.raises(ValueError, match="at least 10"):
        quantize.check_calibration(good[:3], (28, 28, 1), "test")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        quantize.check_calibration(good + 255.0, (28, 28, 1), "test")


# ------------------------------------------------------------------------------ the exported files
@pytest.mark.slow
def test_bundle_card_rows(bundle):
    out, proc = bundle
    card = json.loads((out / "model_card.json").read_text())
    section = card["quantization"]
    rows = section["variants"]
    assert list(rows) == ["float", "litert_dynamic", "litert_int8", "onnx_int8"]
    float_bytes = os.path.getsize(out / "model.onnx")
    for name in ("litert_dynamic", "litert_int8", "onnx_int8"):
        v = rows[name]
        assert os.path.getsize(out / v["file"]) == v["bytes"]
        assert v["bytes"] < 0.5 * float_bytes, (name, v["bytes"], float_bytes)  # int8 weights: ~1/4 of float32
        assert v["verification"]["top1_agreement"] >= 0.99
        assert v["latency_ms_batch1"] > 0 and v["throughput_images_per_s"] > 0
    rob = section["robustness"]
    assert rob["examples"] == EVAL_EXAMPLES and rob["square_queries"] == QUERIES
    res = rob["results"]
    f = res["float"]
    assert f["pgd20"] < f["clean"] and f["robust"] <= min(f["pgd20"], f["autoattack"], f["square"])
    for name in ("litert_dynamic", "litert_int8", "onnx_int8"):
        r = res[name]
        assert r["robust"] <= min(r["clean"], r["transfer_pgd20"], r["transfer_autoattack"],
                                  r["transfer_fakequant_pgd20"], r["bpda"], r["square"])
        assert r["bpda"] <= min(r["bpda_float"], r["bpda_fakequant"])
        assert r["transfer"] < r["clean"]  # the float model's adversarial images do transfer
        assert r["bpda"] < r["clean"]  # the white-box attack on the file's own logits breaks it
        assert r["square"] < r["clean"]  # the black-box attack works through the file's runtime
    assert rob["bpda"]["gradient_sources"] == ["fakequant", "float"] and rob["square_accepts_ties"] is True
    assert "| litert_int8 | model_int8.tflite |" in proc.stdout
    assert "## Quantized files" in (out / "BUILD.md").read_text()


@pytest.mark.slow
def test_quantized_files_run_without_tensorflow(bundle, workdir, mnist_test):
    """The files run in a Python that cannot import the project and never imports TensorFlow; the
    int8 file really holds int8 tensors, and its logits follow the Keras model's."""
    out, _ = bundle
    x, y = mnist_test
    xs = x[UNSEEN]
    np.save(out.parent / "unseen.npy", xs)
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, onnxruntime as ort
        from ai_edge_litert.interpreter import Interpreter
        x = np.load({str(out.parent / 'unseen.npy')!r})
        res = {{}}
        for name in ("model_dynamic.tflite", "model_int8.tflite"):
            it = Interpreter(model_path={str(out)!r} + "/" + name)
            inp, o = it.get_input_details()[0], it.get_output_details()[0]
            it.resize_tensor_input(inp["index"], x.shape); it.allocate_tensors()
            it.set_tensor(inp["index"], x); it.invoke()
            kinds = [str(np.dtype(t["dtype"])) for t in it.get_tensor_details()]
            res[name] = {{"logits": it.get_tensor(o["index"]).tolist(), "int8": kinds.count("int8"),
                         "float32": kinds.count("float32"), "input": str(np.dtype(inp["dtype"]))}}
        s = ort.InferenceSession({str(out)!r} + "/model_int8.onnx", providers=["CPUExecutionProvider"])
        res["model_int8.onnx"] = {{"logits": s.run(["logits"], {{"images": x}})[0].tolist()}}
        res["tensorflow_loaded"] = "tensorflow" in sys.modules
        print(json.dumps(res))
    """)
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["tensorflow_loaded"] is False
    model = keras.models.load_model(workdir / "model.keras")
    ref = model(xs, training=False).numpy()
    scale = float(np.max(np.abs(ref)))
    for name in ("model_dynamic.tflite", "model_int8.tflite", "model_int8.onnx"):
        got = np.asarray(res[name]["logits"], np.float32)
        assert got.shape == ref.shape
        assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.97, name
        assert np.max(np.abs(got - ref)) < 0.1 * scale, (name, np.max(np.abs(got - ref)), scale)
    assert res["model_int8.tflite"]["input"] == "float32"
    # full int8: activations are int8 too, so int8 tensors outnumber the float ones (only the input,
    # output and their (de)quantize ends are float); dynamic range keeps float activations.
    assert res["model_int8.tflite"]["int8"] > res["model_int8.tflite"]["float32"]
    assert res["model_dynamic.tflite"]["int8"] >= 1
    assert res["model_dynamic.tflite"]["float32"] > res["model_int8.tflite"]["float32"]


# ------------------------------------------------------------------------------- the protocol
def test_square_through_a_runtime_equals_square_on_keras(workdir, mnist_test):
    """The numpy hook is transparent: Square on a numpy wrapper of the Keras model finds exactly
    what Square on the Keras model finds (same seed), and it breaks images."""
    model = keras.models.load_model(workdir / "model.keras")
    x, y = mnist_test
    xs, ys = x[:32], y[:32]
    wrapped = primitives.numpy_model(lambda b: model(b, training=False).numpy(), 10)
    direct = quantized_eval.square(model, xs, ys, epsilon=EPSILON, norm="linf", queries=20, seed=3)
    hooked = quantized_eval.square(wrapped, xs, ys, epsilon=EPSILON, norm="linf", queries=20, seed=3)
    np.testing.assert_array_equal(direct, hooked)
    clean = model(xs, training=False).numpy().argmax(-1) == ys
    assert direct.sum() < clean.sum()


def test_evaluate_file_is_the_per_example_minimum(workdir, mnist_test, tmp_path):
    x, y = mnist_test
    xs, ys = x[:20], y[:20]
    model = keras.models.load_model(workdir / "model.keras")
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(quantize.convert_litert(model, "int8", data.load_arrays("mnist5k", "train", examples=50)[0]))
    clf = runtimes.load(str(path))
    rng = np.random.default_rng(0)
    noisy = np.clip(xs + rng.uniform(-EPSILON, EPSILON, xs.shape), 0, 1).astype(np.float32)
    side = {"x_pgd20": noisy, "x_autoattack": xs, "x_fakequant_pgd20": noisy[::-1].copy()}
    r = quantized_eval.evaluate_file(clf, xs, ys, side, epsilon=EPSILON, norm="linf", queries=10, seed=0,
                                     float_gap=0.0, gradient_sources={"float": model}, bpda_steps=10)
    pred = lambda a: clf(a).argmax(-1) == ys  # noqa: E731
    assert r["clean"] == pytest.approx(np.mean(pred(xs)))
    assert r["transfer_pgd20"] == pytest.approx(np.mean(pred(noisy)))
    assert r["transfer_autoattack"] == r["clean"]  # the "adversarial" images here are the clean ones
    assert r["transfer_fakequant_pgd20"] == pytest.approx(np.mean(pred(noisy[::-1].copy())))
    assert r["transfer"] == pytest.approx(np.mean(pred(xs) & pred(noisy) & pred(noisy[::-1].copy())))
    assert r["bpda"] == r["bpda_float"] < r["clean"]
    assert r["robust"] <= min(r["transfer"], r["square"], r["bpda"])
    assert (r["warning"] is not None) == (abs(r["gap"]) > quantized_eval.WARN_GAP)


def test_fake_quantized_copy_tracks_the_int8_file_and_passes_gradients(workdir, mnist_test, tmp_path):
    """The copy's weights lie on a per-channel int8 grid, it agrees with the real int8 file more
    closely than the float model does, and PGD through it (straight-through gradients) breaks it."""
    from export.fake_quant import fake_quantized_copy
    from ardir_tf.attacks import pgd

    model = keras.models.load_model(workdir / "model.keras")
    cal = data.load_arrays("mnist5k", "train", examples=100)[0]
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(quantize.convert_litert(model, "int8", cal))
    copy = fake_quantized_copy(model, cal)
    kernel = copy.get_layer("logits").kernel.numpy()
    scale = np.max(np.abs(kernel), axis=0) / 127
    np.testing.assert_allclose(kernel / scale, np.round(kernel / scale), atol=1e-3)
    x, y = mnist_test
    xs, ys = x[UNSEEN], y[UNSEEN]
    file_logits = runtimes.load(str(path))(xs)
    copy_logits = copy(xs, training=False).numpy()
    float_logits = model(xs, training=False).numpy()
    assert np.mean(copy_logits.argmax(-1) == file_logits.argmax(-1)) >= 0.97
    assert np.abs(copy_logits - file_logits).mean() < np.abs(float_logits - file_logits).mean()
    x_adv = pgd(copy, tf.constant(xs), tf.constant(ys), epsilon=EPSILON, step_size=0.075, steps=10, norm="linf",
                random_start="uniform", objective="ce", training=False, seed=tf.constant([0, 0], tf.int64))
    assert np.mean(copy(x_adv, training=False).numpy().argmax(-1) == ys) < 0.5 * np.mean(copy_logits.argmax(-1) == ys)


# ------------------------------------------------------------------------------------ bad input
def _previous_export(tmp_path):
    """A stand-in for an existing export in ``--out`` (what ``--overwrite`` may replace)."""
    target = tmp_path / "existing"
    target.mkdir()
    (target / "model_card.json").write_text('{"schema_version": 1}\n')
    (target / "model.onnx").write_bytes(b"float model bytes")
    return target, tree_digest(target)


def _assert_bad(proc, target, before, pattern):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], proc.stderr[-2000:]
    assert tree_digest(target) == before
    assert not [p for p in os.listdir(target.parent) if p.startswith("existing.")]  # no temporary left behind


def test_unknown_mode_exits_2_and_keeps_the_export(workdir, tmp_path):
    target, before = _previous_export(tmp_path)
    proc = run(["-m", "export", f"--model={workdir / 'model.keras'}", f"--out={target}", "--overwrite",
                "--quantize=dynamic,int4"])
    _assert_bad(proc, target, before, "unknown quantization mode 'int4'")


def test_calibration_of_the_wrong_shape_exits_2_and_keeps_the_export(workdir, tmp_path):
    target, before = _previous_export(tmp_path)
    np.savez(tmp_path / "cal.npz", x=np.zeros((20, 32, 32, 3), np.float32))
    proc = run(["-m", "export", f"--model={workdir / 'model.keras'}", f"--out={target}", "--overwrite",
                "--quantize=int8", f"--calibration={tmp_path / 'cal.npz'}"])
    _assert_bad(proc, target, before, "the model takes [N, 28, 28, 1]")


@pytest.mark.slow
def test_unconvertible_layer_exits_2_and_keeps_the_export(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from unconvertible_layer import Erf
    finally:
        sys.path.pop(0)
    train_tiny(str(tmp_path / "erf"), extra_layer=Erf())
    target, before = _previous_export(tmp_path)
    proc = run([os.path.join(ROOT, "tests", "unconvertible_layer.py"), f"--model={tmp_path / 'erf' / 'model.keras'}",
                f"--out={target}", "--overwrite", "--quantize=int8", "--verify_examples=64", "--examples=1",
                "--calibration_examples=20"])
    _assert_bad(proc, target, before, "cannot convert model")
    assert "Erf" in proc.stderr


# ------------------------------------------------------------------------------------- predict
@pytest.mark.slow
def test_predict_takes_the_quantized_files(bundle):
    """``export.predict --model`` classifies the bundle's example digits with each quantized file
    as the float ONNX model does (the examples are held-out digits the tiny model gets right)."""
    out, _ = bundle
    images = sorted(str(p) for p in (out / "examples").glob("*.png"))
    answers = {}
    for name in ("model.onnx", "model_dynamic.tflite", "model_int8.tflite", "model_int8.onnx"):
        proc = run(["-m", "export.predict", f"--model={out / name}", "--json", *images])
        assert proc.returncode == 0, proc.stderr[-2000:]
        answers[name] = [row["top"][0]["class"] for row in json.loads(proc.stdout)]
    assert all(a == answers["model.onnx"] for a in answers.values()), answers


def test_predict_bad_model_arguments(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_text("not a flatbuffer")
    for args, message in ((["x.png"], "exactly one of --onnx and --model"),
                          ([f"--model={tmp_path / 'missing.tflite'}", "x.png"], "does not exist"),
                          ([f"--model={bad}", "x.png"], "is not a loadable LiteRT model")):
        proc = run(["-m", "export.predict", *args])
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error:"), proc.stderr
        assert message in proc.stderr


@pytest.mark.slow
def test_demo_shows_the_quantized_files_answers(bundle):
    """The demo opens the bundle's quantized files and reports how each classifies the clean and
    the adversarial image (made on the float model)."""
    from app.runtime import Bundle
    from app.ui import Demo

    out, _ = bundle
    demo = Demo(Bundle(str(out)))
    example = sorted((out / "examples").glob("*.png"))[0]
    result = demo._run(str(example), "PGD", EPSILON, 10, False)
    model = result["summary"]["models"][0]
    assert sorted(model["quantized"]) == ["model_dynamic.tflite", "model_int8.onnx", "model_int8.tflite"]
    for answer in model["quantized"].values():
        assert answer["clean"]["class"] == model["clean"]["class"]
    assert "Quantized files, same images" in result["outputs"][6]
