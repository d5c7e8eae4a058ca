"""End-to-end tests of ``python -m export``: the bundle, its parity with Keras, its signatures, input
validation, the predict CLI, atomic output and a forced verification failure.

One tiny ``small_cnn`` (width 4) is trained for two epochs on 1,000 mnist5k digits and saved in a
fake training workdir (``model.keras``, ``settings.json``, ``results.json``); the export CLI runs
once on it in a subprocess (module fixture ``bundle``). Parity is checked on held-out digits the
export never saw, in a separate Python (``-I``: no project on the path) that imports only
TensorFlow and onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from ardir_tf import data, evaluate, models
from dir_digest import tree_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4
EPSILON = 0.3
VERIFY_EXAMPLES = 64
EXAMPLES = 4
# Held-out digits the export did not use (it verifies on the first VERIFY_EXAMPLES test images).
UNSEEN = slice(500, 628)


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, **kw)


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mnist_test():
    return data.load_arrays("mnist5k", "test")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mnist_test):
    """A training workdir as ``ardir_tf.train`` leaves it, with a quickly trained tiny student."""
    x, y = data.load_arrays("mnist5k", "train", examples=1000)
    keras.utils.set_random_seed(0)
    model = models.get("small_cnn", 10, (28, 28, 1), width=4)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=50, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("run")
    model.save(path / "model.keras")
    settings = {"method": "ardir", "dataset": "mnist5k", "data_dir": None, "model": "small_cnn",
                "model_options": "width=4", "epsilon": EPSILON, "norm": "linf", "attack_steps": 10,
                "ir_layers": ["stage1:stage2"], "gamma": 1.0, "teacher": "", "progress": "none"}
    (path / "settings.json").write_text(json.dumps(settings))
    xt, yt = mnist_test
    results = evaluate.evaluate(model, xt[:50], yt[:50], epsilon=EPSILON, attacks=["fgsm"], dataset="mnist5k",
                                verbose=0)
    (path / "results.json").write_text(json.dumps(results))
    return path


@pytest.fixture(scope="module")
def keras_model(workdir):
    return keras.models.load_model(workdir / "model.keras", compile=False)


@pytest.fixture(scope="module")
def bundle(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "bundle"
    proc = run(["-m", "export", f"--model={workdir / 'model.keras'}", f"--out={out}", f"--examples={EXAMPLES}",
                f"--verify_examples={VERIFY_EXAMPLES}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PASSED" in proc.stdout, proc.stdout
    return out


@pytest.fixture(scope="module")
def loaded(bundle):
    return tf.saved_model.load(str(bundle / "saved_model"))


@pytest.fixture(scope="module")
def session(bundle):
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------- the bundle
def test_bundle_files_and_model_card(bundle, workdir):
    for name in ("saved_model/saved_model.pb", "model.onnx", "model_card.json", "BUILD.md", "predict.py", "images.py"):
        assert (bundle / name).is_file(), name
    assert not [p for p in os.listdir(bundle.parent) if ".tmp-" in p or ".old-" in p]
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["model"]["architecture"] == "small_cnn" and card["model"]["options"] == "width=4"
    assert card["dataset"]["name"] == "mnist5k" and card["dataset"]["class_names"] == [str(i) for i in range(10)]
    assert card["input"] == {"name": "images", "shape": [28, 28, 1], "layout": "NHWC", "dtype": "float32",
                             "range": [0.0, 1.0], "normalization": "none"}
    assert card["method"]["name"] == "ardir" and card["method"]["settings"]["gamma"] == 1.0
    assert "progress" not in card["method"]["settings"]
    assert card["teacher"] == {"path": None, "available": False}
    assert card["threat_model"] == {"norm": "linf", "epsilon": EPSILON, "epsilon_source": "settings"}
    assert card["internal_representations"]["layers"] == ["stage1"]
    assert card["internal_representations"]["teacher_layers"] == ["stage2"]
    assert card["evaluation"] == json.loads((workdir / "results.json").read_text())
    assert len(card["examples"]) == EXAMPLES
    for entry in card["examples"]:
        assert (bundle / entry["file"]).is_file() and entry["class_name"] == str(entry["label"])
    v = card["verification"]
    assert v["passed"] and v["examples"] == VERIFY_EXAMPLES and v["tolerance"] == TOLERANCE
    for part in (v["natural"]["saved_model"], v["natural"]["onnx"], v["adversarial"]["onnx"],
                 v["adversarial"]["saved_model"], v["attack_signature"]["onnx"]):
        assert part["max_abs_logit_diff"] < TOLERANCE and part["top1_agreement"] == 1.0
    assert v["attack_signature"]["within_ball"] and v["attack_signature"]["in_unit_range"]
    for name in ("fgsm", "pgd", "cw"):  # the demo's signatures reproduce the library's attacks
        assert v["attack_signatures"][name]["differing_pixels"] <= 0.01, v["attack_signatures"]
    assert set(card["artifacts"]["saved_model"]["signatures"]) == {"serving_default", "features", "attack", "fgsm",
                                                                   "pgd", "cw"}
    assert card["artifacts"]["onnx"]["sha256"] == hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()


def test_parity_outside_the_project(bundle, keras_model, mnist_test, tmp_path):
    """Plain TensorFlow and onnxruntime, in a Python that cannot import this project, agree with
    the Keras model on held-out digits the export never saw."""
    x, y = mnist_test[0][UNSEEN], mnist_test[1][UNSEEN]
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime as ort, tensorflow as tf
        x = np.load("x.npy")
        m = tf.saved_model.load({str(bundle / 'saved_model')!r})
        sm = m.signatures["serving_default"](images=tf.constant(x))
        sess = ort.InferenceSession({str(bundle / 'model.onnx')!r}, providers=["CPUExecutionProvider"])
        ox, op = sess.run(["logits", "probabilities"], {{"images": x}})
        np.savez("out.npz", sm=sm["logits"].numpy(), smp=sm["probabilities"].numpy(), ox=ox, op=op)
        print("project modules:", [k for k in sys.modules if k.startswith(("ardir_tf", "export"))])
    """)
    (tmp_path / "check.py").write_text(script)
    proc = subprocess.run([sys.executable, "-I", "check.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "project modules: []" in proc.stdout
    out = np.load(tmp_path / "out.npz")
    ref = keras_model(x, training=False).numpy()
    ref_p = tf.nn.softmax(ref).numpy()
    for logits, probs in ((out["sm"], out["smp"]), (out["ox"], out["op"])):
        assert np.max(np.abs(logits - ref)) < TOLERANCE
        assert np.max(np.abs(probs - ref_p)) < TOLERANCE
        np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(ref, -1))
    assert np.mean(np.argmax(ref, -1) == y) > 0.5  # the student learnt something


def test_features_signature_returns_the_distilled_layers(loaded, keras_model, mnist_test):
    x = mnist_test[0][UNSEEN][:16]
    got = loaded.signatures["features"](images=tf.constant(x))
    assert list(got) == ["stage1"]
    ref = models.feature_model(keras_model, ["stage1"])(x, training=False)[1].numpy()
    assert got["stage1"].shape == ref.shape == (16, 24, 24, 4)
    assert np.max(np.abs(got["stage1"].numpy() - ref)) < TOLERANCE


def test_attack_signature_stays_in_the_ball_and_fools_the_model(loaded, session, keras_model, mnist_test):
    x, y = mnist_test[0][UNSEEN][:64], mnist_test[1][UNSEEN][:64]
    out = loaded.signatures["attack"](images=tf.constant(x), labels=tf.constant(y, tf.int32),
                                      epsilon=tf.constant(EPSILON), steps=tf.constant(10))
    x_adv = out["adversarial_images"].numpy()
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.max(np.abs(x_adv - x)) <= EPSILON + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    adv_logits = keras_model(x_adv, training=False).numpy()
    assert np.max(np.abs(out["logits"].numpy() - adv_logits)) < TOLERANCE
    clean = np.mean(np.argmax(keras_model(x, training=False).numpy(), -1) == y)
    robust = np.mean(np.argmax(adv_logits, -1) == y)
    assert robust < clean - 0.2, (clean, robust)
    (onnx_logits,) = session.run(["logits"], {"images": x_adv})
    np.testing.assert_array_equal(np.argmax(onnx_logits, -1), np.argmax(adv_logits, -1))
    zero = loaded.signatures["attack"](images=tf.constant(x[:4]), labels=tf.constant(y[:4], tf.int32),
                                       epsilon=tf.constant(0.0), steps=tf.constant(3))
    np.testing.assert_array_equal(zero["adversarial_images"].numpy(), x[:4])


def test_attack_signatures_are_the_library_attacks(loaded, keras_model, mnist_test):
    """``fgsm``, ``pgd`` and ``cw`` (the demo's attacks) compute what ``ardir_tf.attacks`` computes on
    the Keras model from the same inputs and seed, and lower its accuracy."""
    from ardir_tf.attacks.fgsm import fgsm
    from ardir_tf.attacks.pgd import pgd

    x, y = tf.constant(mnist_test[0][UNSEEN][:64]), tf.constant(mnist_test[1][UNSEEN][:64], tf.int32)
    seed = tf.constant([7, 3], tf.int64)
    eps, step = tf.constant(EPSILON), tf.constant(EPSILON / 4)

    def sig(name, **kw):
        return loaded.signatures[name](images=x, labels=y, epsilon=eps, **kw)["adversarial_images"].numpy()

    iterative = dict(step_size=step, steps=tf.constant(10), seed=seed)
    got = {"fgsm": sig("fgsm"), "pgd": sig("pgd", **iterative), "cw": sig("cw", **iterative)}
    ref = {"fgsm": fgsm(keras_model, x, y, epsilon=EPSILON).numpy()}
    for name, objective in (("pgd", "ce"), ("cw", "cw")):
        ref[name] = tf.function(lambda o=objective: pgd(keras_model, x, y, epsilon=EPSILON, step_size=EPSILON / 4,
                                                        steps=10, random_start="uniform", objective=o,
                                                        seed=seed))().numpy()
    clean = np.mean(np.argmax(keras_model(x, training=False).numpy(), -1) == y.numpy())
    for name in got:
        diff = np.abs(got[name] - ref[name])
        print(f"{name}: max |signature - library| {diff.max():.2e}, pixels differing {np.mean(diff > 1e-6):.4f}")
        assert np.mean(diff > 1e-6) <= 0.001, name
        assert np.max(np.abs(got[name] - x.numpy())) <= EPSILON + 1e-6
        robust = np.mean(np.argmax(keras_model(got[name], training=False).numpy(), -1) == y.numpy())
        assert robust < clean - 0.2, (name, clean, robust)
    # The seed is the random start's: the same seed repeats the images, another one does not.
    np.testing.assert_array_equal(sig("pgd", **iterative), got["pgd"])
    other = sig("pgd", **dict(iterative, seed=tf.constant([8, 3], tf.int64)))
    assert np.mean(np.abs(other - got["pgd"]) > 1e-6) > 0.1
    # steps=0 returns the random start, inside the ball; epsilon 0 returns the images unchanged.
    start = sig("cw", **dict(iterative, steps=tf.constant(0)))
    assert 0 < np.max(np.abs(start - x.numpy())) <= EPSILON + 1e-6
    zero = loaded.signatures["pgd"](images=x, labels=y, epsilon=tf.constant(0.0), **iterative)
    np.testing.assert_array_equal(zero["adversarial_images"].numpy(), x.numpy())


# ------------------------------------------------------------------------------- bad inputs
GOOD = np.full((2, 28, 28, 1), 0.5, np.float32)


@pytest.mark.parametrize("images, message", [
    (GOOD[0], "images must have shape [N, 28, 28, 1]"),  # rank 3
    (GOOD[None], "images must have shape [N, 28, 28, 1]"),  # rank 5
    (np.full((2, 28, 28, 3), 0.5, np.float32), "got shape] [2 28 28 3]"),  # channels
    (np.full((2, 32, 32, 1), 0.5, np.float32), "got shape] [2 32 32 1]"),  # size
    (np.full((2, 28, 28, 1), 255.0, np.float32), "pixels must lie in [0, 1]"),  # 0..255 pixels
    (GOOD.astype(np.uint8), "expected to be a float tensor but is a uint8 tensor"),  # dtype
    (GOOD.astype(np.float64), "expected to be a float tensor but is a double tensor"),  # dtype
])
def test_saved_model_rejects_bad_images(loaded, images, message):
    for name in ("serving_default", "features"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=None) as err:
            loaded.signatures[name](images=tf.constant(images))
        assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("labels, epsilon, steps, message", [
    ([1], 0.1, 1, "labels must hold one label per image"),
    ([1, 10], 0.1, 1, "labels must be class indices in [0, 10)"),
    ([1, 2], 1.5, 1, "epsilon must lie in [0, 1]"),
    ([1, 2], 0.1, -1, "steps must lie in [0, 1000]"),
    ([1, 2], [0.1, 0.2], 1, "epsilon must be a float32 scalar"),
])
def test_attack_signature_rejects_bad_arguments(loaded, labels, epsilon, steps, message):
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        loaded.signatures["attack"](images=tf.constant(GOOD), labels=tf.constant(labels, tf.int32),
                                    epsilon=tf.constant(epsilon, tf.float32), steps=tf.constant(steps, tf.int32))
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("step_size, seed, message", [
    (-0.1, [0, 0], "step_size must be a finite number >= 0"),
    (float("nan"), [0, 0], "step_size must be a finite number >= 0"),
    (0.1, [0], "seed must be two int64 numbers, shape [2]"),
    ([0.1, 0.1], [0, 0], "step_size must be a float32 scalar"),
])
def test_pgd_and_cw_signatures_reject_bad_arguments(loaded, step_size, seed, message):
    for name in ("pgd", "cw"):
        with pytest.raises(tf.errors.InvalidArgumentError) as err:
            loaded.signatures[name](images=tf.constant(GOOD), labels=tf.constant([1, 2], tf.int32),
                                    epsilon=tf.constant(0.1), step_size=tf.constant(step_size, tf.float32),
                                    steps=tf.constant(2), seed=tf.constant(seed, tf.int64))
        assert message in str(err.value), str(err.value)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"epsilon must lie in \[0, 1\]"):
        loaded.signatures["fgsm"](images=tf.constant(GOOD), labels=tf.constant([1, 2], tf.int32),
                                  epsilon=tf.constant(2.0))


@pytest.mark.parametrize("images, message", [
    (GOOD[0], "Invalid rank for input: images"),
    (np.full((2, 28, 28, 3), 0.5, np.float32), "Got invalid dimensions for input: images"),
    (GOOD.astype(np.float64), "Unexpected input data type"),
])
def test_onnx_rejects_bad_images(session, images, message):
    with pytest.raises(Exception) as err:
        session.run(["logits"], {"images": images})
    assert message in str(err.value)


# ------------------------------------------------------------------------------- predict CLI
def test_predict_cli_classifies_image_files(bundle, keras_model, mnist_test, tmp_path):
    from PIL import Image

    card = json.loads((bundle / "model_card.json").read_text())
    files = [str(bundle / e["file"]) for e in card["examples"]]
    # An RGB image of another size is converted to one 28x28 channel.
    big = tmp_path / "big_rgb.png"
    Image.open(files[0]).convert("RGB").resize((56, 56)).save(big)
    proc = run(["-m", "export.predict", f"--onnx={bundle / 'model.onnx'}", *files, str(big), "--top_k=2"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == EXAMPLES + 1
    expected = np.argmax(keras_model(mnist_test[0][:EXAMPLES], training=False).numpy(), -1)
    for line, path, k in zip(lines, files, expected):
        head, tops = line.split(": ", 1)
        assert head == path and tops.split()[0] == str(k) and len(tops.split(", ")) == 2
    # The bundle's own copy runs without this project on the path.
    proc = subprocess.run([sys.executable, "-I", "predict.py", "--onnx=model.onnx", card["examples"][0]["file"],
                           "--json"], cwd=bundle, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["top"][0]["class"] == int(expected[0])


def test_predict_cli_rejects_bad_input(bundle, tmp_path):
    np.save(tmp_path / "rgb.npy", np.zeros((2, 28, 28, 3), np.float32))
    np.save(tmp_path / "int.npy", np.zeros((28, 28, 1), np.int64))
    np.save(tmp_path / "rank5.npy", np.zeros((1, 2, 28, 28, 1), np.float32))
    np.save(tmp_path / "range.npy", np.full((28, 28, 1), 255.0, np.float32))
    (tmp_path / "text.png").write_text("not an image")
    cases = {"rgb.npy": "must have 1 channel", "int.npy": "got dtype int64", "rank5.npy": "got rank 5",
             "range.npy": "must lie in [0, 1]", "text.png": "not an image file", "missing.png": "no such file"}
    script = "import sys, export.predict as p; code = p.main(sys.argv[1:]); " \
             "assert 'tensorflow' not in sys.modules; sys.exit(code)"
    for name, message in cases.items():
        proc = run(["-c", script, f"--onnx={bundle / 'model.onnx'}", str(tmp_path / name)])
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    np.save(tmp_path / "ok.npy", np.zeros((3, 28, 28, 1), np.uint8))
    proc = run(["-c", script, f"--onnx={bundle / 'model.onnx'}", str(tmp_path / "ok.npy")])
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 3, proc.stderr


# --------------------------------------------------------------------------- atomic output
def test_existing_out_is_refused_without_overwrite(bundle, workdir):
    before = tree_digest(bundle)
    proc = run(["-m", "export", f"--model={workdir / 'model.keras'}", f"--out={bundle}"])
    assert proc.returncode == 2
    assert "already exists; pass --overwrite" in proc.stderr.strip().splitlines()[-1]
    assert tree_digest(bundle) == before


def test_failed_verification_leaves_existing_out_untouched(bundle, workdir, monkeypatch):
    """A tampered ONNX model fails the verification: the export raises, nothing is published, the
    temporary directory is gone and the previous export is left as it was."""
    import onnx
    from onnx import numpy_helper

    from export import exporter, onnx_model
    from export.verify import VerificationError

    real_convert = onnx_model.convert

    def tampered_convert(model, path, *args, **kwargs):
        proto = real_convert(model, path, *args, **kwargs)
        for init in proto.graph.initializer:
            value = numpy_helper.to_array(init)
            if value.shape == (10,):  # the logits bias
                init.CopyFrom(numpy_helper.from_array(value + np.float32(1e-3), init.name))
                break
        else:
            raise AssertionError("no logits bias found in the ONNX graph")
        onnx.save(proto, path)
        return proto

    monkeypatch.setattr(onnx_model, "convert", tampered_convert)
    before = tree_digest(bundle)
    lines = []
    for out, overwrite in ((bundle, True), (bundle.parent / "fresh", False)):
        with pytest.raises(VerificationError, match=r"onnx \(natural\): max \|logit difference\|") as err:
            exporter.export(str(workdir / "model.keras"), str(out), overwrite=overwrite, examples=1,
                            verify_examples=VERIFY_EXAMPLES, log=lines.append)
        assert err.value.report["passed"] is False
        assert err.value.report["natural"]["saved_model"]["max_abs_logit_diff"] < TOLERANCE
    assert any("FAILED" in line for line in lines)
    assert tree_digest(bundle) == before
    assert sorted(os.listdir(bundle.parent)) == ["bundle"]


def test_atomic_publish_and_guards(tmp_path):
    from export import atomic

    out = tmp_path / "out"
    out.mkdir()
    (out / "model_card.json").write_text("old")
    tmp = atomic.make_temporary(str(out))
    (tmp_path / os.path.basename(tmp) / "model_card.json").write_text("new")
    with pytest.raises(ValueError, match="already exists"):
        atomic.publish(tmp, str(out), overwrite=False)
    atomic.publish(tmp, str(out), overwrite=True)
    assert (out / "model_card.json").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="without model_card.json"):
        atomic.check_destination(str(other), overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        atomic.check_destination(str(tmp_path / "file"), overwrite=True)


def test_bad_arguments_fail_before_any_work(workdir, tmp_path):
    from export import exporter

    model = str(workdir / "model.keras")
    for kwargs, message in (({"onnx_opset": 5}, "--onnx_opset must lie in"),
                            ({"verify_examples": 10}, "at least 64"),
                            ({"examples": -1}, "--examples must lie in"),
                            ({"dataset": "cifar10"}, "pass the model's --dataset")):
        with pytest.raises(ValueError, match=message):
            exporter.export(model, str(tmp_path / "out"), **kwargs)
    with pytest.raises(ValueError, match="does not exist"):
        exporter.export(str(tmp_path / "missing.keras"), str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []
