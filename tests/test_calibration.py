"""Calibration sources (folder, .npy, built-in, errors) and the range estimators."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from calibration.preprocess import PreprocessSpec
from calibration.ranges import METHODS, StreamingHistogram, collect_ranges, select_range
from calibration.sources import calibration_set, labelled_images
from edgekit.errors import DataError

SPEC = PreprocessSpec(resolution=64, resize=73)


def _save(path, size=(90, 70), mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def test_folder_any_depth_and_sizes(tmp_path):
    _save(tmp_path / "a.jpg")
    _save(tmp_path / "x" / "y" / "b.png", size=(300, 120))
    _save(tmp_path / "x" / "c.webp", size=(40, 40))
    (tmp_path / "notes.txt").write_text("not an image")
    calib = calibration_set(tmp_path, SPEC)
    assert calib.tensors.shape == (3, 3, 64, 64)
    assert calib.tensors.dtype == np.float32


def test_grey_image_is_converted(tmp_path):
    _save(tmp_path / "grey.png", mode="L", value=200)
    tensors = calibration_set(tmp_path, SPEC).tensors
    # A grey pixel becomes R=G=B before normalisation: channels differ only by mean/std.
    raw = tensors[0] * np.array(SPEC.std)[:, None, None] + np.array(SPEC.mean)[:, None, None]
    assert np.allclose(raw[0], raw[1], atol=1e-5) and np.allclose(raw[1], raw[2], atol=1e-5)
    assert abs(float(raw.mean()) - 200 / 255) < 1e-3


def test_empty_folder_names_it(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        calibration_set(tmp_path, SPEC)


def test_corrupt_image_named_and_skipped_with_warning(tmp_path, caplog):
    _save(tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        calibration_set(tmp_path, SPEC)
    with caplog.at_level(logging.WARNING):
        calib = calibration_set(tmp_path, SPEC, skip_bad_images=True)
    assert len(calib.tensors) == 1
    assert "broken.jpg" in caplog.text


def test_too_few_samples_says_counts(tmp_path):
    _save(tmp_path / "a.jpg")
    _save(tmp_path / "b.jpg")
    with pytest.raises(DataError, match="has 2 calibration samples, 5 were asked"):
        calibration_set(tmp_path, SPEC, samples=5)


def test_npy_float_and_uint8(tmp_path):
    rng = np.random.default_rng(0)
    floats = rng.standard_normal((6, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "t.npy", floats)
    assert np.array_equal(calibration_set(tmp_path / "t.npy", SPEC).tensors, floats)
    images = rng.integers(0, 255, (4, 100, 80, 3), dtype=np.uint8)
    np.save(tmp_path / "u.npy", images)
    assert calibration_set(tmp_path / "u.npy", SPEC, samples=3).tensors.shape == (3, 3, 64, 64)
    np.save(tmp_path / "bad.npy", floats[:, :, :32, :32])
    with pytest.raises(DataError, match="32x32"):
        calibration_set(tmp_path / "bad.npy", SPEC)


def test_builtin_is_seeded_and_varied():
    a = calibration_set("builtin", SPEC, samples=12, seed=3).tensors
    b = calibration_set(None, SPEC, samples=12, seed=3).tensors
    c = calibration_set("builtin", SPEC, samples=12, seed=4).tensors
    assert a.shape == (12, 3, 64, 64)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # Real photographs, not noise: crops differ from one another and are not N(0, 1).
    assert len({round(float(t.mean()), 3) for t in a}) == 12
    assert abs(float(a.std()) - 1.0) > 0.05 or abs(float(a.mean())) > 0.05


def test_imagefolder_labels_by_folder_name(tmp_path):
    from calibration.sources import class_folders, imagenet_synsets

    _save(tmp_path / "n01440764" / "tench.jpg")
    _save(tmp_path / "n01443537" / "goldfish.jpg")
    _save(tmp_path / "unknown" / "x.jpg")
    labels = {p.name: label for p, label in labelled_images(tmp_path, imagenet_synsets())}
    assert labels == {"tench.jpg": 0, "goldfish.jpg": 1, "x.jpg": None}
    assert class_folders(tmp_path) == ["n01440764", "n01443537", "unknown"]
    own = {p.name: label for p, label in labelled_images(tmp_path, ["unknown", "n01443537"])}
    assert own == {"tench.jpg": None, "goldfish.jpg": 1, "x.jpg": 0}


def _histogram(data, bins=2048):
    return np.histogram(data, bins, (data.min(), data.max()))[0], float(data.min()), float(data.max())


def test_methods_pick_different_ranges():
    rng = np.random.default_rng(0)
    # A ReLU-like tensor with a long tail: every estimator clips it differently.
    data = np.concatenate([np.maximum(rng.standard_normal(100_000), 0), rng.exponential(3.0, 200)])
    hist, lo, hi = _histogram(data)
    picked = {m: select_range(hist, lo, hi, m) for m in METHODS}
    assert picked["minmax"] == pytest.approx((0.0, hi))
    highs = [picked[m][1] for m in METHODS]
    assert len({round(h, 3) for h in highs}) == len(METHODS), picked
    assert all(p[0] == 0.0 for p in picked.values())  # non-negative stays non-negative
    assert all(h <= hi + 1e-9 for h in highs)


def test_mse_range_minimises_quantisation_error():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.standard_normal(50_000), [25.0, -20.0]])
    hist, lo, hi = _histogram(data)

    def mse(r):
        scale = (r[1] - r[0]) / 255
        q = np.clip(np.round((data - r[0]) / scale), 0, 255) * scale + r[0]
        return float(np.mean((q - data) ** 2))

    errors = {m: mse(select_range(hist, lo, hi, m)) for m in METHODS}
    # The MSE search is optimal by its own criterion, up to its grid and the histogram's bins.
    assert errors["mse"] <= 1.02 * min(errors.values()), errors
    assert errors["mse"] < errors["minmax"]


def test_symmetric_ranges_and_zero_inside():
    rng = np.random.default_rng(2)
    data = rng.uniform(0.5, 3.0, 10_000)  # all positive: zero must still be representable
    hist, lo, hi = _histogram(data)
    for method in METHODS:
        a, b = select_range(hist, lo, hi, method)
        assert a == 0.0 and b > 0
        s_lo, s_hi = select_range(hist, lo, hi, method, symmetric=True)
        assert s_lo == -s_hi


def test_collect_ranges_one_pass_and_output_keeps_top():
    batches = [np.arange(10, dtype=np.float32) - 3, np.arange(10, dtype=np.float32) * 2]
    ranges = collect_ranges(lambda b: {"t": b}, batches, "minmax")
    assert ranges["t"] == pytest.approx((-3.0, 18.0))
    rng = np.random.default_rng(3)
    logits = [np.concatenate([rng.standard_normal(100_000), rng.exponential(3.0, 200)]).astype(np.float32)]
    top = float(logits[0].max())
    clipped = collect_ranges(lambda b: {"y": b}, logits, "mse")["y"]
    kept = collect_ranges(lambda b: {"y": b}, logits, "mse", outputs=["y"])["y"]
    assert clipped[1] < 0.9 * top and kept[1] == pytest.approx(top) and kept[0] == pytest.approx(clipped[0])


def test_streaming_histogram_matches_one_shot_histogram():
    """Growing the range batch by batch (exact pair merges) loses no counts and picks the same range."""
    rng = np.random.default_rng(4)
    spreads = [(0.1, 0.0), (1.0, 2.0), (5.0, -3.0), (0.01, 0.0)]
    parts = [rng.standard_normal(20_000) * s + o for s, o in spreads]
    streaming = StreamingHistogram()
    for part in parts:
        streaming.add(part.astype(np.float32))
    data = np.concatenate(parts).astype(np.float32)
    counts, left, right = streaming.edges()
    assert counts.sum() == data.size and 2048 // 2 <= len(counts) <= 2048
    span = float(data.max() - data.min())
    assert left <= data.min() and right >= data.max() and right - left < 1.01 * span
    hist, lo, hi = _histogram(data.astype(np.float64))
    one_shot = select_range(hist, lo, hi, "mse")
    assert streaming.select("mse") == pytest.approx(one_shot, rel=0.02)


@pytest.mark.parametrize(
    "values",
    [
        np.full(64, 3e-11, np.float32),  # constant: zero spread
        np.float32([3e-11, 3.0000002e-11, 2.9999998e-11] * 20),  # a few ulps: "too many bins" before
        np.float32([-1e-11, 2e-11, 1e-9, 0.0]),
        np.zeros(8, np.float32),
    ],
)
def test_degenerate_ranges_do_not_crash(values):
    """Randomly initialised networks have activations ~1e-8..1e-11: histograms must still work."""
    hist = StreamingHistogram()
    hist.add(values)
    hist.add(values * 0.5)
    for method in METHODS:
        lo, hi = hist.select(method)
        assert np.isfinite(lo) and np.isfinite(hi) and lo <= 0.0 <= hi
        assert (hi > 0) == (values.max() > 0)


def _reshape_graph(tmp_path, target: list[int]):
    """input [1, 4] -> Reshape(target, a constant initializer) -> Relu -> output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(target, np.int64), "shape")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("target", [[1, 2, 2], [2, 2]])
def test_probe_batches_images_only_where_the_graph_computes_each_alone(tmp_path, capfd, target):
    """[1, 2, 2] spells out a batch of 1 (the probe takes a batch through it); [2, 2] folds the
    batch away (a two-image call fails: one image a call, without an error on screen). The ranges
    are the same either way."""
    from calibration.onnx_int8 import activation_ranges

    tensors = np.random.default_rng(0).standard_normal((6, 4), dtype=np.float32)
    path = _reshape_graph(tmp_path, target)
    assert activation_ranges(path, tensors, "minmax") == activation_ranges(path, tensors, "minmax", batch=1)
    assert "onnxruntime" not in capfd.readouterr().err


def test_probe_calls_keep_their_tensors_within_the_memory_budget(monkeypatch):
    """Images a call = the budget over one image's tensors together, at most ``batch``, at least 1."""
    from calibration import onnx_int8

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"input": x, "wide": np.repeat(x, 4, axis=1)}  # 1 + 4 KiB an image

    tensors = np.zeros((6, 256), np.float32)
    for budget, images in [(11 * 1024, 2), (1024, 1), (1 << 30, 16)]:
        monkeypatch.setattr(onnx_int8, "PROBE_MEMORY", budget)
        assert onnx_int8._images_per_call(run, tensors, 16) == images
