"""The Gradio robustness demo (``python -m app``), end to end.

Two tiny ``small_cnn`` models are trained on mnist5k and exported, as ``python -m ardir_tf.train``
and ``python -m export`` do (session fixture ``bundles``, one process per model, both in parallel,
about 60 s of CPU): a PGD-AT student (eps 0.3 with eps warm-up; ~94% natural, ~60% robust) and a
standard one (~89% natural, 0% robust). ``ARDIR_APP_TEST_BUNDLES=DIR`` keeps them in ``DIR`` and
reuses them on the next run.

The robust bundle also holds ``model_int8.tflite`` (``--quantize=int8``, without the robustness
protocol). One server runs the real CLI in a subprocess on a free port, as a user starts it (no
``TF_CPP_MIN_LOG_LEVEL``), with the training library and the exporter made unimportable (all of
``ardir_tf`` but its attacks and its quiet start; all of ``export`` but the image loader and the
model-file opener): the app must work on the exported artifacts, attacking through the bundle's
own signatures (and the quantized file through its runtime, with the library's Square). The tests
drive its API with ``gradio_client``, send bad uploads and 20 concurrent requests, and open the page in headless
Chromium (Debian's ``chromium`` package driven by Playwright). Without Chromium or Playwright the
browser test is skipped locally and **fails** when ``CI`` is set.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.3                  # the threat model of both bundles
MODERATE_EPS = 0.2         # the attack of the flip test (2/3 of the threat model)
EXAMPLES = 12
CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")

TRAIN_COMMON = ["--model=small_cnn", "--model_options=width=8", "--dataset=mnist5k", "--eval_examples=100",
                "--val_examples=0", "--progress=none", "--seed=0", f"--epsilon={EPS}"]
TRAIN = {
    # ~94% natural, ~60% robust (FGSM+PGD-20+CW at eps 0.3); PGD at 0.2 flips ~17% of its predictions.
    "robust": ["--method=pgd_at", "--epochs=3", "--train_examples=4000", "--learning_rate=0.003", "--attack_steps=5",
               "--attack_step_size=0.1", "--epsilon_warmup_epochs=1"],
    # ~89% natural, 0% robust; PGD at 0.2 flips ~94% of its predictions.
    "standard": ["--method=standard", "--epochs=2", "--train_examples=2000"],
}
QUANTIZE = {"robust": "int8", "standard": ""}

# Trains (ardir_tf.train.run, as `python -m ardir_tf.train` does) and exports (export.exporter.export,
# as `python -m export` does) in one process: one TensorFlow start-up per bundle instead of two.
MAKE_BUNDLE = textwrap.dedent("""
    import sys
    from absl import flags
    from ardir_tf import train
    from export import exporter

    workdir, out, examples, quantize, *args = sys.argv[1:]
    values = flags.FlagValues()
    train.define_flags(values)
    values(["train", f"--workdir={workdir}", *args])
    train.run(train.settings_from_flags(values))
    exporter.export(f"{workdir}/model.keras", out, examples=int(examples), verify_examples=64,
                    quantize=quantize, quantize_eval_examples=0)
""")

# Runs the app's CLI with the training library and the exporter unimportable: of export only the
# image loader export.images and the model-file opener export.classifiers (which the bundle's
# predict.py shares), of ardir_tf only the attacks (and the losses they are written with) and the
# quiet start.
SERVER = textwrap.dedent("""
    import importlib.abc, runpy, sys

    ALLOWED = {"export": ("export", "export.images", "export.classifiers"),
               "ardir_tf": ("ardir_tf", "ardir_tf.cli", "ardir_tf.losses")}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in ALLOWED and name not in ALLOWED[top] and not name.startswith("ardir_tf.attacks"):
                raise ImportError(f"the demo must not import {name}")
            return None

    sys.meta_path.insert(0, Block())
    runpy.run_module("app", run_name="__main__", alter_sys=True)
""")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", GRADIO_ANALYTICS_ENABLED="False")


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), timeout=timeout,
                          cwd=ROOT)


def _make_bundle(kind: str, root: str) -> str:
    out = os.path.join(root, kind)
    if os.path.isfile(os.path.join(out, "model_card.json")):
        card = _card(out)
        if "pgd" in card["artifacts"]["saved_model"]["signatures"] and bool(card.get("quantization")) == bool(
                QUANTIZE[kind]):
            return out
        for stale in (out, os.path.join(root, f"{kind}-run")):  # kept from before the attack signatures
            shutil.rmtree(stale)
    proc = _run(["-c", MAKE_BUNDLE, os.path.join(root, f"{kind}-run"), out, str(EXAMPLES), QUANTIZE[kind],
                 *TRAIN_COMMON, *TRAIN[kind]])
    assert proc.returncode == 0, f"training or export of {kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, str]:
    root = os.environ.get("ARDIR_APP_TEST_BUNDLES") or str(tmp_path_factory.mktemp("app_bundles"))
    os.makedirs(root, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {kind: pool.submit(_make_bundle, kind, root) for kind in TRAIN}
        return {kind: f.result() for kind, f in futures.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    """``python -m app --export=robust --compare=standard`` on a free port; yields its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app_server") / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, f"--export={bundles['robust']}",
                                 f"--compare={bundles['standard']}", f"--port={port}", "--concurrency=4"],
                                stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={k: v for k, v in _env().items() if k != "TF_CPP_MIN_LOG_LEVEL"})  # as a user starts it
    url = f"http://127.0.0.1:{port}"
    saved = {key: os.environ.get(key) for key in ("NO_PROXY", "no_proxy")}
    for key in saved:  # a CI proxy must not see requests to the local server (urllib, httpx)
        hosts = [h for h in (saved[key] or "").split(",") if h]
        os.environ[key] = ",".join(dict.fromkeys(hosts + ["127.0.0.1", "localhost"]))
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with status {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/config", timeout=5) as r:
                    # The app prints its address once launch() returns, just after the server answers.
                    if r.status == 200 and "Running on local URL" in log.read_text():
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                pytest.fail(f"the app did not answer within 180 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield {"url": url, "log": log, "proc": proc}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False, download_files=False)


def _card(bundle: str) -> dict:
    with open(os.path.join(bundle, "model_card.json")) as f:
        return json.load(f)


def _attack(client, path, attack="PGD", eps=MODERATE_EPS, steps=10, invert=False) -> tuple:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), attack, eps, steps, invert, api_name="/attack")


# ------------------------------------------------------------------------------------ the CLI
def test_cli_refuses_a_bad_export_dir(tmp_path):
    (tmp_path / "model_card.json").write_text("{}")
    for args, expected in (([f"--export={tmp_path / 'missing'}"], "does not exist"),
                           ([f"--export={tmp_path}"], "is not an export bundle")):
        proc = _run(["-m", "app", *args], timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr


def test_cli_defaults_bind_locally():
    from app.__main__ import parse_args

    args = parse_args(["--export=x"])
    assert (args.host, args.port, args.compare) == ("127.0.0.1", 7860, None)


def test_server_is_local_and_never_shares(server):
    text = server["log"].read_text()
    assert f"Running on local URL:  {server['url']}" in text, text
    assert "gradio.live" not in text and "public URL" not in text.lower()
    assert "share=True" not in text and "public link" not in text, text  # no advice to use a missing option
    # a quiet start: none of TensorFlow's start-up lines (the oneDNN note, CUDA's absence, cuInit's "E" line)
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cuda", "cuInit", "cpu_feature_guard"):
        assert noise not in text, text


def test_attack_endpoint_names_its_outputs(client):
    """gradio_client shows the outputs by name (not value_13, value_24)."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/attack"]
    params = [p["parameter_name"] for p in api["parameters"]]
    names = [r["label"] for r in api["returns"]]
    assert params == ["image", "attack", "eps", "steps", "invert"], params
    per_model = ["clean image", "clean prediction", "adversarial image", "perturbation", "adversarial prediction",
                 "verdict", "onnx check"]
    assert names == (["status"] + [f"{role}: {n}" for role in ("robust student", "comparison") for n in per_model]
                     + ["summary"]), names
    text = client.view_api(print_info=False, return_format="str")
    assert "value_" not in text and "robust_student_adversarial_image" in text and "comparison_verdict" in text, text


def _square(client, path, file="model_int8.tflite", eps=EPS, queries=300, invert=False) -> tuple:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), file, eps, queries, invert, api_name="/square")


def test_square_endpoint_names_its_outputs(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/square"]
    assert [p["parameter_name"] for p in api["parameters"]] == ["image", "file", "eps", "queries", "invert"]
    assert [r["label"] for r in api["returns"]] == ["square: status", "square: adversarial image",
                                                    "square: perturbation", "square: prediction of the file",
                                                    "square: summary"]


def test_square_attacks_the_quantized_file_live(client, bundles):
    """Square through the int8 file's runtime: it flips some of the robust student's example
    digits at a large eps, stays in the ball, is reproducible, and at eps 0 changes nothing."""
    card = _card(bundles["robust"])
    paths = [os.path.join(bundles["robust"], e["file"]) for e in card["examples"]]
    flipped = 0
    for path in paths:
        summary = _square(client, path, eps=0.4, queries=200)[-1]
        assert summary["file"] == "model_int8.tflite" and summary["queries"] == 200
        assert summary["perturbation"]["linf"] <= 0.4 + 1e-6
        assert summary["flipped"] == (summary["adversarial"]["class"] != summary["clean"]["class"])
        assert 1 <= summary["queries_used"] <= 200
        flipped += summary["flipped"]
    print(f"Square (200 queries) at eps 0.4 flipped {flipped} of {len(paths)} examples on model_int8.tflite")
    assert flipped >= 1
    again = [_square(client, paths[0], eps=0.4, queries=200)[-1] for _ in range(2)]
    assert again[0]["adversarial"] == again[1]["adversarial"] and again[0]["queries_used"] == again[1]["queries_used"]
    still = _square(client, paths[0], eps=0.0, queries=50)
    assert not still[-1]["flipped"] and still[-1]["perturbation"]["linf"] == 0.0
    assert "kept its answer for all 50 queries" in still[0]


def test_a_bundle_without_the_attack_signatures_is_refused(bundles, tmp_path):
    """An older bundle (no fgsm/pgd/cw signatures): one error line that says to export again."""
    old = tmp_path / "old"
    shutil.copytree(bundles["standard"], old)
    script = textwrap.dedent("""
        import sys, tensorflow as tf
        path = sys.argv[1] + "/saved_model"
        m = tf.saved_model.load(path)
        kept = {k: m.signatures[k] for k in ("serving_default", "features", "attack")}
        tf.saved_model.save(m, path + ".old", signatures=kept)
    """)
    proc = _run(["-c", script, str(old)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.rmtree(old / "saved_model")
    os.rename(old / "saved_model.old", old / "saved_model")
    proc = _run(["-c", SERVER, f"--export={old}", "--port=1"], timeout=300)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "without the signature(s) fgsm, pgd, cw" in lines[0], proc.stderr[-2000:]
    assert "export it again: python -m export" in lines[0]


# ---------------------------------------------------------------------------- the attack API
def test_attack_flips_the_standard_model_not_the_robust_one(client, bundles):
    card = _card(bundles["robust"])
    flipped = {"robust student": 0, "comparison": 0}
    for entry in card["examples"]:
        out = _attack(client, os.path.join(bundles["robust"], entry["file"]))
        summary = out[-1]
        assert summary["input"]["example"] == os.path.basename(entry["file"])
        assert summary["input"]["true_label"] == entry["class_name"]
        for m in summary["models"]:
            flipped[m["role"]] += m["flipped"]
            assert m["perturbation"]["linf"] <= MODERATE_EPS + 1e-6
            assert m["onnx"]["agrees"] and m["onnx"]["max_abs_probability_diff"] < 1e-4
            assert len(m["clean"]["top5"]) == 5
    n = len(card["examples"])
    print(f"PGD-10 at eps {MODERATE_EPS} flipped {flipped} of {n} examples")
    assert flipped["comparison"] > n / 2, flipped
    assert flipped["robust student"] < n / 2, flipped


def test_outputs_of_one_request(server, bundles, tmp_path):
    """FGSM and CW on an upload of another size and mode: the page shows the converted image."""
    from gradio_client import Client

    client = Client(server["url"], verbose=False)  # downloads the output images
    upload = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 100, 4), dtype=np.uint8), "RGBA").save(upload)
    out = _attack(client, upload, "FGSM", 0.1, 10)
    assert len(out) == 1 + 2 * 7 + 1
    status, summary = out[0], out[-1]
    assert "FGSM" in status and "upload (100x60 RGBA)" in status
    assert summary["input"] == {"size": [100, 60], "mode": "RGBA", "example": None, "true_label": None}
    assert summary["steps"] == 1
    for m in summary["models"]:
        assert abs(m["perturbation"]["linf"] - 0.1) < 1e-5  # FGSM: a full step of eps
    clean = np.asarray(Image.open(out[1]))
    assert clean.shape[0] == clean.shape[1] and clean.shape[0] % 28 == 0  # 28x28 enlarged
    assert out[2]["label"] == summary["models"][0]["clean"]["label"]
    assert len(out[2]["confidences"]) == 5
    cw = _attack(client, os.path.join(bundles["robust"], _card(bundles["robust"])["examples"][0]["file"]), "CW", 0.2, 5)
    assert cw[-1]["attack"] == "CW" and cw[-1]["steps"] == 5
    assert all(m["perturbation"]["linf"] <= 0.2 + 1e-6 for m in cw[-1]["models"])


@pytest.mark.parametrize("api, args, message", [
    ("/attack", ("PGD", 5.0, 10), "eps must lie in [0, 0.4]"),
    ("/attack", ("PGD", -0.1, 10), "eps must lie in [0, 0.4]"),
    ("/attack", ("PGD", 0.1, 1000), "steps must lie in [1, 100]"),
    ("/attack", ("Nope", 0.1, 10), "not in the list of choices"),
    ("/square", ("model_int8.tflite", 0.3, 0), "queries must lie in [1, 2000]"),
    ("/square", ("model_int8.tflite", 0.9, 10), "eps must lie in [0, 0.4]"),
    ("/square", ("model.onnx", 0.3, 10), "not in the list of choices"),
])
def test_bad_parameters_give_a_message(client, bundles, api, args, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = os.path.join(bundles["robust"], _card(bundles["robust"])["examples"][0]["file"])
    with pytest.raises(AppError, match=message.replace("[", r"\[").replace("]", r"\]")):
        client.predict(handle_file(path), *args, False, api_name=api)


def test_bad_uploads_give_a_message_and_the_server_survives(client, server, bundles, tmp_path):
    from gradio_client.exceptions import AppError

    (tmp_path / "notes.png").write_text("not a picture\n")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("L", (7000, 7000)).save(tmp_path / "huge.png")  # 49 megapixels in a small file
    with open(tmp_path / "cut.png", "wb") as f:  # a truncated PNG
        png = tmp_path / "ok.png"
        Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(png)
        f.write(png.read_bytes()[:60])
    for name, message in (("notes.png", "not an image"), ("empty.png", "empty"), ("huge.png", "too large"),
                          ("cut.png", "damaged or unsupported|not an image")):
        with pytest.raises(AppError, match=message):
            _attack(client, tmp_path / name)
    # A file above the upload limit (10 MB) is refused by the server itself.
    big = os.urandom(11 * 2**20)
    boundary = "----ardirtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server["url"] + "/gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413
    assert server["proc"].poll() is None
    assert _attack(client, tmp_path / "ok.png", "FGSM", 0.05)[-1]["models"]  # still answering


def test_twenty_concurrent_requests(server, bundles):
    """20 users at once, each with its own image and eps: 20 answers, each to its own request."""
    import onnxruntime as ort
    from gradio_client import Client

    card = _card(bundles["robust"])
    files = [os.path.join(bundles["robust"], e["file"]) for e in card["examples"]]
    expected = {}
    for kind in ("robust", "standard"):  # reference clean predictions, straight from model.onnx
        session = ort.InferenceSession(os.path.join(bundles[kind], "model.onnx"), providers=["CPUExecutionProvider"])
        x = np.stack([np.asarray(Image.open(f).convert("L"), np.float32)[..., None] / 255.0 for f in files])
        expected[kind] = session.run(["probabilities"], {"images": x})[0].argmax(1)

    def one(i):
        client = Client(server["url"], verbose=False, download_files=False)
        eps = round(0.01 * (i + 1), 2)
        return i, eps, _attack(client, files[i % len(files)], "PGD", eps, 10)[-1]

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    seconds = time.time() - start
    assert len(results) == 20
    for i, eps, summary in results:
        assert summary["epsilon"] == pytest.approx(eps)
        assert summary["input"]["example"] == os.path.basename(files[i % len(files)])
        for m, kind in zip(summary["models"], ("robust", "standard")):
            assert m["clean"]["class"] == expected[kind][i % len(files)], (i, m)
            assert m["perturbation"]["linf"] <= eps + 1e-6
    print(f"20 concurrent requests answered in {seconds:.1f} s")


# ------------------------------------------------------------------------------ a real browser
@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's ``chromium`` for Playwright: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on
    the PATH. Without it (or without Playwright) the browser test is skipped, or fails when ``CI`` is
    set. Session-scoped so that it is checked before the bundles are built."""
    why = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "the playwright package is not installed (pip install -r requirements-dev.txt)"
    named = os.environ.get("CHROMIUM")
    executable = shutil.which(named) if named else (shutil.which("chromium") or shutil.which("chromium-browser"))
    if why is None and not executable:
        why = (f"CHROMIUM={named!r} is not an executable" if named else
               "no chromium on the PATH (apt-get install -y chromium, or set CHROMIUM=/path/to/chromium)")
    if why:
        if CI:
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)
    return executable


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--no-proxy-server"]


def test_browser_runs_an_attack(chromium, server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = os.environ.get("ARDIR_APP_SCREENSHOTS") or str(tmp_path)
    os.makedirs(shots, exist_ok=True)
    (tmp_path / "notes.png").write_text("not a picture\n")
    (tmp_path / "big.png").write_bytes(os.urandom(11 * 2**20))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.goto(server["url"], wait_until="domcontentloaded", timeout=60_000)
            expect(page.locator("#run")).to_be_visible(timeout=60_000)
            expect(page.locator("#robustness")).to_contain_text("robust accuracy, all attacks")
            expect(page.locator("#accuracy-plot img")).to_be_visible(timeout=30_000)
            page.locator("#examples button.gallery-item").nth(1).click()
            expect(page.locator("#input-image img")).to_be_visible(timeout=30_000)
            page.locator("#run").click()
            expect(page.locator("#status")).to_contain_text("eps = ", timeout=60_000)
            for i in (0, 1):
                expect(page.locator(f"#adversarial-{i} img")).to_be_visible(timeout=30_000)
                expect(page.locator(f"#perturbation-{i} img")).to_be_visible()
                expect(page.locator(f"#verdict-{i}")).to_contain_text("Prediction")
                expect(page.locator(f"#onnx-{i}")).to_contain_text("ONNX")
            status = page.locator("#status").inner_text()
            assert "example 001_" in status and "robust student" in status and "comparison" in status, status
            shot = os.path.join(shots, "app_attack.png")
            page.screenshot(path=shot, full_page=True)
            assert os.path.getsize(shot) > 50_000
            print(f"screenshot: {shot}; status: {status}")

            # A file that is not an image: a readable message in the page, and the page keeps working.
            page.locator("#input-image input[type=file]").set_input_files(str(tmp_path / "notes.png"))
            page.locator("#run").click()
            message = page.get_by_test_id("toast-text").filter(has_text="not an image")
            expect(message.first).to_be_visible(timeout=30_000)
            page.wait_for_timeout(1000)  # the toast's fade-in
            page.screenshot(path=os.path.join(shots, "app_bad_upload.png"))
            # A file over the 10 MB limit: refused at upload, with a message.
            page.locator("#input-image input[type=file]").set_input_files(str(tmp_path / "big.png"))
            expect(page.get_by_test_id("toast-text").filter(has_text="exceed the maximum").first).to_be_visible(
                timeout=30_000)
        finally:
            browser.close()
    assert server["proc"].poll() is None


# ------------------------------------------------------------------------ pieces, no server
def test_demo_attacks_are_the_library_attacks(bundles):
    """The demo's FGSM, PGD and CW (the bundle's signatures, called by ``Bundle.attack``) compute
    what ``ardir_tf.attacks`` computes on the trained Keras model, same images, labels and seed, and
    they fool the standard model as the demo's own copy did."""
    import keras
    import tensorflow as tf

    from app.runtime import SEED, STEP_FRACTION, Bundle, load_image
    from ardir_tf.attacks.fgsm import fgsm
    from ardir_tf.attacks.pgd import pgd

    bundle = Bundle(bundles["standard"])
    model = keras.models.load_model(os.path.join(os.path.dirname(bundles["standard"]), "standard-run", "model.keras"),
                                    compile=False)
    x = np.stack([load_image(e.path, bundle.shape)[0] for e in bundle.examples])
    p_clean = bundle.predict(x)
    labels = p_clean.argmax(1).astype(np.int32)
    eps, steps = MODERATE_EPS, 10
    seed = tf.constant(SEED, tf.int64)
    library = {
        "FGSM": lambda: fgsm(model, x, labels, epsilon=eps),
        "PGD": lambda: pgd(model, x, labels, epsilon=eps, step_size=STEP_FRACTION * eps, steps=steps, seed=seed),
        "CW": lambda: pgd(model, x, labels, epsilon=eps, step_size=STEP_FRACTION * eps, steps=steps, seed=seed,
                          objective="cw"),
    }
    rows = np.arange(len(x))
    for method, attack in library.items():
        demo = bundle.attack(x, labels, method, eps, steps)
        ref = tf.function(attack)().numpy()
        differing = np.mean(np.abs(demo - ref) > 1e-6)
        assert differing <= 0.001, (method, differing)
        np.testing.assert_array_equal(bundle.attack(x, labels, method, eps, steps), demo)  # a fixed seed
        p_adv = bundle.predict(demo)
        drop = float(np.mean(p_clean[rows, labels] - p_adv[rows, labels]))
        flipped = float(np.mean(p_adv.argmax(1) != labels))
        print(f"{method} eps {eps}: confidence in the clean class drops by {drop:.2f}, {flipped:.0%} flipped")
        assert drop > 0.3 and flipped > (0.25 if method == "FGSM" else 0.5), (method, drop, flipped)


def test_load_image_converts_any_mode(tmp_path):
    from app.runtime import load_image

    cases = {
        "rgb.jpg": Image.fromarray(np.full((50, 30, 3), 200, np.uint8), "RGB"),
        "p.gif": Image.new("P", (9, 9)),
        "i16.png": Image.fromarray(np.full((10, 12), 65535, np.uint16)),
        "la.png": Image.new("LA", (5, 5), (0, 0)),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        x, info = load_image(str(tmp_path / name), (28, 28, 1))
        assert x.shape == (28, 28, 1) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1, name
    assert load_image(str(tmp_path / "i16.png"), (28, 28, 1))[0].min() == 1.0  # 16-bit white stays white
    assert load_image(str(tmp_path / "la.png"), (28, 28, 1))[0].min() == 1.0   # transparent over white
    x, _ = load_image(str(tmp_path / "rgb.jpg"), (32, 32, 3), invert=True)
    assert x.shape == (32, 32, 3) and x.max() < 0.3


def _exif_rotated(image: Image.Image, path, orientation: int = 6) -> None:
    """Saves ``image`` with an EXIF orientation tag (6: a viewer rotates it 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_demo_and_predict_load_the_same_array(tmp_path, suffix):
    """One loader: the demo and the bundle's predict.py turn a rotated photo and a transparent PNG
    into identical arrays, with the EXIF rotation applied and transparency shown over white."""
    from app.runtime import load_image as demo_load
    from export.predict import load_image as predict_load

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (2, 4, 3), dtype=np.uint8)  # 5x5 blocks: survive JPEG, show a rotation
    wide = Image.fromarray(np.kron(blocks, np.ones((5, 5, 1), np.uint8)), "RGB")  # 20 wide, 10 high
    rotated = tmp_path / f"rotated.{suffix}"
    _exif_rotated(wide, rotated)
    transparent = tmp_path / "transparent.png"
    rgba = np.zeros((12, 12, 4), np.uint8)  # black, fully transparent ...
    rgba[3:9, 3:9] = (255, 0, 0, 255)       # ... around an opaque red square
    Image.fromarray(rgba, "RGBA").save(transparent)
    for path in (rotated, transparent):
        for shape in ((10, 10, 1), (28, 28, 3), (20, 10, 3)):
            demo, _ = demo_load(str(path), shape)
            predicted = predict_load(str(path), shape)
            assert predicted.shape == (1, *shape) and predicted.dtype == np.float32
            np.testing.assert_array_equal(predicted[0], demo, err_msg=f"{path.name} {shape}")
    # The rotation is applied: the tagged file reads as the upright 10-wide, 20-high image.
    upright = tmp_path / f"upright.{suffix}"
    wide.transpose(Image.Transpose.ROTATE_270).save(upright)
    got, info = demo_load(str(rotated), (20, 10, 3))
    assert info["size"] == [20, 10]  # as stored
    reference = demo_load(str(upright), (20, 10, 3))[0]
    assert np.mean(np.abs(got - reference)) <= (0 if suffix == "png" else 0.03)
    assert np.mean(np.abs(got - np.asarray(wide.resize((10, 20)), np.float32) / 255)) > 0.1  # not just resized
    # Transparency over white, not the black stored under it.
    x = predict_load(str(transparent), (12, 12, 3))[0]
    assert np.all(x[0, 0] == 1.0) and np.allclose(x[5, 5], [1.0, 0.0, 0.0])


def test_accuracy_curve_prefers_the_cards_sweep():
    from app import ui

    class Fake:
        name, epsilon, norm, shape = "fake", 0.3, "linf", (28, 28, 1)
        card = {"threat_model": {"norm": "linf", "epsilon": 0.3}, "evaluation": {
            "examples": 1000, "epsilon": 0.3, "norm": "linf", "natural_accuracy": 0.99,
            "robust_accuracy": {"pgd20": 0.9, "all": 0.88},
            "sweep": [{"epsilon": e, "natural_accuracy": 0.99, "robust_accuracy": {"pgd20": a, "all": a - 0.01}}
                      for e, a in ((0.1, 0.97), (0.2, 0.95), (0.3, 0.89))]}}

        def accuracy_curve(self, *a, **k):
            raise AssertionError("no start-up sweep when the card has one")

    curves = ui.accuracy_curves([Fake()], 0.4)
    assert curves == [{"model": "fake", "index": 0, "epsilons": [0.0, 0.1, 0.2, 0.3], "accuracy": [0.99, 0.96, 0.94, 0.88],
                       "style": "line", "source": "model card sweep, 1000 test images, all attacks"}]
    assert ui.accuracy_figure(curves, [Fake()]) is not None
    table = ui.robustness_markdown([Fake()], ["robust student"])
    assert "| natural accuracy | 99.0% |" in table and "88.0%" in table


def test_example_images_curve_never_stands_beside_the_cards_numbers():
    """PGD on the 10 example images is not the model's robustness: with card numbers it is not
    plotted; without any it is plotted dotted and labelled as what it is."""
    from app import ui

    class Fake:
        name, epsilon, norm, shape = "fake", 0.3, "linf", (28, 28, 1)
        card = {"evaluation": {"examples": 1000, "epsilon": 0.3, "norm": "linf", "natural_accuracy": 0.95,
                               "robust_accuracy": {"pgd20": 0.65, "all": 0.608}}}
        calls = 0

        def accuracy_curve(self, epsilons, steps=10):
            Fake.calls += 1
            return {"epsilons": list(epsilons), "accuracy": [1.0] * len(epsilons), "examples": 10,
                    "attack": f"PGD-{steps}"}

    curves = ui.accuracy_curves([Fake()], 0.4)
    assert Fake.calls == 0 and [c["style"] for c in curves] == ["points"], curves
    assert curves[0]["accuracy"] == [0.95, 0.608] and "1000 test images" in curves[0]["source"]
    bare = Fake()
    bare.card = {}
    curves = ui.accuracy_curves([bare], 0.4)
    assert Fake.calls == 1 and [c["style"] for c in curves] == ["examples"]
    assert curves[0]["source"].startswith("NOT the model's robustness: PGD-10 on only the 10 example images")
    figure = ui.accuracy_figure(curves, [bare])
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == [f"fake: {curves[0]['source']}"]
    assert "not the model's robustness" in figure.axes[0].get_title()
