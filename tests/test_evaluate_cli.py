"""`ctdeblur-evaluate` end to end on a small dataset written here (kernel, projection, registered and
identical pairs) with an untrained exported generator (it returns its input), plus its error paths."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from model.config import preset_config
from model.evaluate import main
from model.evaluation_report import ClusteredBootstrap
from model.export import export_generator
from model.networks import build_generator
from pipeline.kernels import (
    MotionConfig,
    blur_hu,
    motion_psf,
    motion_trajectory,
    sample_motion_params,
)
from pipeline.pairs import NO_PSF, to_int16_hu
from pipeline.phantom import phantom_hu, phantom_series
from tfrecords_schema import (
    MOTION_PARAM_NAMES,
    SCHEMA_VERSION,
    Pair,
    decode_pair,
    encode_pair,
    read_records,
    shard_name,
    write_records,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
WINDOW = (-1000.0, 1000.0)
FAST = ["--wiener_nsr", "1e-3", "1e-2", "--rl_iterations", "5", "15", "--tune_pairs", "3", "--figure_pairs", "2"]


def make_pair(index: int, split: str, kind: str) -> Pair:
    """kind: kernel (motion PSF), identical (1x1 PSF: blurry == sharp), projection, registered."""
    sharp = to_int16_hu(phantom_hu(phantom_series(index % 3, 8, SIZE, seed=11), index % 8))
    rng = np.random.default_rng(index)
    psf = NO_PSF
    if kind == "kernel":
        params = sample_motion_params(rng, MotionConfig(samples=300, length_px_min=6, length_px_max=10,
                                                        psf_max_size=15, exposures=(1.0,)))
        psf, _ = motion_psf(motion_trajectory(params), params.exposure, 15)
        blurry = to_int16_hu(blur_hu(sharp.astype(np.float32), psf))
    elif kind == "identical":
        psf, blurry = np.ones((1, 1), np.float32), sharp.copy()
    else:
        blurry = to_int16_hu(blur_hu(sharp.astype(np.float32), np.full((5, 5), 1 / 25, np.float32)))
    return Pair(
        sharp_hu=sharp, blurry_hu=blurry, psf=psf, record_key=f"{split}/{kind}/{index:03d}", pixel_spacing_mm=(0.8, 0.8),
        slice_thickness_mm=2.0, slice_position_mm=float(index), collection="fb-dibh" if kind == "registered" else
        ("phantom" if index % 2 else "tcia-demo"), patient_key=f"patient{index % 3}", patient_id="", series_uid="1.2.3",
        sop_instance_uid=f"1.2.3.{index}", slice_index=index, kernel_index=0,
        source_kind="registered" if kind == "registered" else "synthetic", split=split,
        subdataset=-1 if split == "test" else 0, motion=dict.fromkeys(MOTION_PARAM_NAMES, 0.0),
        blur_model={"kernel": "kernel", "identical": "kernel", "projection": "projection", "registered": "none"}[kind],
    )


TEST_KINDS = ["kernel"] * 4 + ["identical", "projection", "registered"]
TRAIN_KINDS = ["projection"] + ["kernel"] * 4


def write_split(root: str, name: str, pairs: list[Pair], shards: int) -> list[dict]:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    info = []
    for s in range(shards):
        path = f"{name}/{shard_name(s, shards)}"
        with open(os.path.join(root, path), "wb") as handle:
            count = write_records(handle, [encode_pair(p) for p in pairs[s::shards]])
        info.append({"file": path, "pairs": count})
    return info


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("dataset"))
    test = [make_pair(i, "test", kind) for i, kind in enumerate(TEST_KINDS)]
    train = [make_pair(100 + i, "train", kind) for i, kind in enumerate(TRAIN_KINDS)]
    splits = {"test": {"pairs": len(test), "shards": write_split(root, "test", test, 2)},
              "train-0": {"pairs": len(train), "shards": write_split(root, "train-0", train, 1)}}
    with open(os.path.join(root, "manifest.json"), "w") as handle:
        json.dump({"schema_version": SCHEMA_VERSION, "compression": "none", "config": {}, "splits": splits}, handle)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """An untrained tiny generator (zero residual: it returns its input) exported as `ours`."""
    directory = str(tmp_path_factory.mktemp("models") / "ours")
    config = preset_config("tiny")
    export_generator(build_generator(config), config, directory, {})
    return directory


def evaluate_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "model.evaluate", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=240, check=False)


def read_test_pairs(dataset: str) -> list[Pair]:
    pairs = []
    for name in sorted(os.listdir(os.path.join(dataset, "test"))):
        with open(os.path.join(dataset, "test", name), "rb") as handle:
            pairs.extend(decode_pair(record) for record in read_records(handle))
    return pairs


def direct_scores(pair: Pair) -> tuple[float, float]:
    low, high = WINDOW
    blurry = np.clip(pair.blurry_hu.astype(np.float64), low, high) - low
    sharp = np.clip(pair.sharp_hu.astype(np.float64), low, high) - low
    with np.errstate(divide="ignore"):
        psnr = peak_signal_noise_ratio(sharp, blurry, data_range=high - low)
    ssim = structural_similarity(blurry, sharp, data_range=high - low, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    return psnr, ssim


@pytest.fixture(scope="module")
def run(dataset, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    done = evaluate_cli("--model", model_dir, "--model", model_dir, "--data", os.path.join(dataset, "test"),
                        "--json", str(out / "results.json"), "--report", str(out / "report"), *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "results.json") as handle:
        results = json.load(handle)
    return done, results, out / "report"


def test_json_blurry_numbers_equal_those_computed_directly(run, dataset):
    _, results, _ = run
    scores = [direct_scores(pair) for pair in read_test_pairs(dataset)]
    finite_psnr = [p for p, _ in scores if math.isfinite(p)]
    blurry = results["methods"]["blurry"]
    assert results["window"] == [-1000.0, 1000.0]
    assert blurry["n"] == len(TEST_KINDS) and blurry["psnr_infinite"] == 1 and len(finite_psnr) == len(TEST_KINDS) - 1
    assert blurry["psnr"] == pytest.approx(np.mean(finite_psnr), abs=1e-6)
    assert blurry["ssim"] == pytest.approx(np.mean([s for _, s in scores]), abs=1e-6)


def test_every_method_is_reported_with_oracles_na_without_a_psf(run):
    done, results, _ = run
    methods = results["methods"]
    assert list(methods) == ["blurry", "wiener_oracle", "rl_oracle", "ours", "ours-2"]
    for oracle in ("wiener_oracle", "rl_oracle"):
        assert methods[oracle]["n"] == 5 and methods[oracle]["n_na"] == 2
        assert methods[oracle]["psnr_gain"]["mean"] > 3.0
    assert methods["ours"]["ssim"] == pytest.approx(methods["blurry"]["ssim"], abs=1e-4)
    assert methods["ours"] == methods["ours-2"]
    baselines = results["baselines"]
    assert baselines["chosen_on"].endswith("train-0") and baselines["tuning_pairs"] == 3
    assert baselines["rl_iterations"] in (5, 15) and baselines["wiener_nsr"] in (1e-3, 1e-2)
    scopes = results["scopes"]
    assert set(scopes) == {"[-1000, 1000] full", "[-1000, 1000] body", "[-1024, 3071] full", "[-1024, 3071] body"}
    assert set(scopes["[-1000, 1000] full"]["collection"]) == {"fb-dibh", "phantom", "tcia-demo"}
    assert scopes["[-1024, 3071] body"]["blur_model"]["projection"]["rl_oracle"]["psnr"]["n_na"] == 1
    assert "Table 1" in done.stdout and "| pairs | 7 (1 ∞) | 5 (2 n/a) |" in done.stdout
    assert "Per collection" in done.stdout and "Per source kind" in done.stdout
    assert "evaluating" in done.stderr


def test_json_intervals_are_patient_clustered_bootstraps(run, dataset):
    done, results, report = run
    pairs = read_test_pairs(dataset)
    scores = [direct_scores(pair) for pair in pairs]
    patients = [pair.patient_key for pair in pairs]
    bootstrap = ClusteredBootstrap(resamples=2000, seed=0)
    methods = results["methods"]
    for name, method in methods.items():
        assert method["ci_method"] == "patient-clustered bootstrap" and method["patients"] == 3, name
    blurry = methods["blurry"]
    assert blurry["ssim_ci95"] == pytest.approx(bootstrap.interval([s for _, s in scores], patients), abs=1e-9)
    finite = [(p, key) for (p, _), key in zip(scores, patients) if math.isfinite(p)]
    assert blurry["psnr_ci95"] == pytest.approx(bootstrap.interval(*zip(*finite)), abs=1e-9)
    assert blurry["psnr_gain"] is None and blurry["ssim_gain"] is None

    with open(report / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    ssim = {(r["pair_index"], r["method"]): r["ssim"] for r in rows}
    with_psf = [r for r in rows if r["method"] == "rl_oracle" and r["status"] == "ok"]
    differences = [float(r["ssim"]) - float(ssim[r["pair_index"], "blurry"]) for r in with_psf]
    gain = methods["rl_oracle"]["ssim_gain"]
    assert gain["mean"] == pytest.approx(np.mean(differences), abs=1e-9) and gain["mean"] > 0.01
    assert gain["ci95"] == pytest.approx(bootstrap.interval(differences, [r["patient_key"] for r in with_psf]), abs=1e-9)
    assert (gain["n"], gain["n_na"], gain["patients"], gain["ci_method"]) == (5, 2, 3, "patient-clustered bootstrap")
    main_scope = results["scopes"]["[-1000, 1000] full"]
    assert main_scope["all"]["rl_oracle"]["ssim_gain"] == gain
    assert methods["ours"]["ssim_gain"]["mean"] == pytest.approx(methods["ours"]["ssim"] - blurry["ssim"], abs=1e-12)
    single = main_scope["collection"]["fb-dibh"]["blurry"]["psnr"]
    assert (single["ci95"], single["patients"], single["n"]) == (None, 1, 1)

    assert results["protocol"]["ci_method"] == "patient-clustered bootstrap"
    assert "2000 resamples" in results["protocol"]["ci"] and results["config"]["bootstrap_resamples"] == 2000
    assert "patient-clustered bootstrap, 2000 resamples] over 7 test pairs from 3 patients" in done.stdout
    assert "| patients | 3 | 3 | 3 | 3 | 3 |" in done.stdout and "| ΔSSIM vs blurry | — |" in done.stdout
    assert "| fb-dibh (1 pair, 1 patient) | PSNR (dB) |" in done.stdout and "(CI n/a: 1 patient)" in done.stdout


def test_report_csv_and_figure(run, dataset):
    done, _, report = run
    assert f"figure: {report / 'figure.png'}" in done.stdout
    picture = mpimg.imread(report / "figure.png")
    assert picture.shape[0] > 500 and picture.shape[1] > 500
    with open(report / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(TEST_KINDS) * 5
    no_psf = [r for r in rows if r["status"] == "no_psf"]
    assert len(no_psf) == 4 and {r["method"] for r in no_psf} == {"wiener_oracle", "rl_oracle"}
    assert all(r["psnr_db"] == "" and r["ssim_fullrange_body"] == "" for r in no_psf)
    identical = next(r for r in rows if r["record_key"] == "test/identical/004" and r["method"] == "blurry")
    assert identical["psnr_db"] == "inf" and float(identical["ssim"]) == pytest.approx(1.0)
    pair = next(p for p in read_test_pairs(dataset) if p.record_key == "test/kernel/000")
    row = next(r for r in rows if r["record_key"] == "test/kernel/000" and r["method"] == "blurry")
    assert float(row["psnr_db"]) == pytest.approx(direct_scores(pair)[0], abs=1e-9)
    assert row["patient_key"] == "patient0" and row["blur_model"] == "kernel"
    text = (report / "evaluation.md").read_text()
    for phrase in ("## Protocol", "patient-clustered bootstrap", "2000 resamples (seed 0)", "HU > -500",
                   "chosen by the highest mean PSNR", "train-0",
                   "Per blur model", "inside the body mask", "[-1024, 3071]", "figure.png", "σ 1.5"):
        assert phrase in text, phrase


def test_baselines_only_and_no_baselines(dataset, tmp_path):
    path = str(tmp_path / "only.json")
    assert main(["--data", os.path.join(dataset, "test"), "--no_baselines", "--json", path]) == 0
    with open(path) as handle:
        assert list(json.load(handle)["methods"]) == ["blurry"]
    assert main(["--data", os.path.join(dataset, "test"), "--wiener_nsr", "1e-2", "--rl_iterations", "5",
                 "--max_pairs", "2", "--json", path]) == 0
    with open(path) as handle:
        results = json.load(handle)
    assert results["pairs"] == 2 and results["baselines"]["chosen_on"] == "given"


def test_a_train_split_is_evaluated_when_nothing_is_tuned_on_it(dataset, tmp_path):
    """A dataset made without a test split (`--test_pairs 0`) is evaluated on its train-0: the
    default validation split is then the data itself, which only matters when something is tuned."""
    train = os.path.join(dataset, "train-0")
    path = str(tmp_path / "train.json")
    for flags in (["--no_baselines"], ["--wiener_nsr", "1e-2", "--rl_iterations", "5"]):
        assert main(["--data", train, *flags, "--max_pairs", "2", "--json", path]) == 0
        with open(path) as handle:
            assert json.load(handle)["pairs"] == 2
    assert main(["--data", train, *FAST, "--max_pairs", "2"]) == 2


def test_yaml_settings_under_flags(dataset, tmp_path):
    settings = tmp_path / "eval.yaml"
    settings.write_text("rl_iterations: [7]\nwiener_nsr: [0.01]\nmax_pairs: 3\nfigure_pairs: 0\n"
                        "bootstrap_resamples: 500\n")
    path = str(tmp_path / "out.json")
    assert main(["--data", os.path.join(dataset, "test"), "--config", str(settings), "--max_pairs", "1",
                 "--json", path]) == 0
    with open(path) as handle:
        results = json.load(handle)
    assert results["pairs"] == 1 and results["baselines"]["rl_iterations"] == 7
    assert results["config"]["wiener_nsr"] == [0.01] and results["config"]["max_pairs"] == 1
    assert results["config"]["bootstrap_resamples"] == 500 and "500 resamples" in results["protocol"]["ci"]
    blurry = results["methods"]["blurry"]
    assert (blurry["psnr_ci95"], blurry["ssim_ci95"], blurry["patients"]) == (None, None, 1)


def corrupted_copy(dataset: str, tmp_path) -> str:
    split = tmp_path / "broken" / "test"
    split.mkdir(parents=True)
    name = shard_name(0, 1)
    with open(os.path.join(dataset, "test", shard_name(0, 2)), "rb") as handle:
        data = bytearray(handle.read())
    data[len(data) // 2] ^= 0xFF
    (split / name).write_bytes(bytes(data))
    return str(split)


def test_corrupt_shard_is_a_clear_error(dataset, tmp_path, capsys):
    split = corrupted_copy(dataset, tmp_path)
    assert main(["--data", split, "--no_baselines"]) == 2
    error = capsys.readouterr().err
    assert "is damaged" in error and shard_name(0, 1) in error and "CRC mismatch (record" in error, error


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("root", "is a dataset root"),
    ("empty", "no pairs in"),
    ("no_shards", "no shards match"),
    ("not_export", "is not an exported ctdeblur generator"),
    ("no_validation", "--validation"),
    ("bad_setting", "invalid settings"),
    ("bad_bootstrap", "bootstrap_resamples must be >= 100"),
    ("unknown_setting", "unknown setting 'rl_iteration'"),
    ("tuned_on_test", "is the test split"),
])
def test_user_errors_exit_2_with_a_message(dataset, tmp_path, capsys, case, message):
    args = ["--data", os.path.join(dataset, "test"), "--no_baselines"]
    if case == "missing":
        args = ["--data", str(tmp_path / "nowhere" / "test")]
    elif case == "root":
        args = ["--data", dataset]
    elif case in ("empty", "no_shards", "no_validation"):
        split = tmp_path / "lonely" / "test"
        split.mkdir(parents=True)
        if case == "empty":
            (split / shard_name(0, 1)).write_bytes(b"")
            args = ["--data", str(split)]
        elif case == "no_shards":
            args = ["--data", str(split)]
        else:
            with open(os.path.join(dataset, "test", shard_name(0, 2)), "rb") as handle:
                (split / shard_name(0, 1)).write_bytes(handle.read())
            args = ["--data", str(split), *FAST]
    elif case == "not_export":
        (tmp_path / "plain").mkdir()
        args += ["--model", str(tmp_path / "plain")]
    elif case == "bad_setting":
        args += ["--window_hu", "100", "-100"]
    elif case == "bad_bootstrap":
        args += ["--bootstrap_resamples", "10"]
    elif case == "tuned_on_test":
        args = ["--data", os.path.join(dataset, "test"), *FAST, "--validation", os.path.join(dataset, "test")]
    elif case == "unknown_setting":
        (tmp_path / "bad.yaml").write_text("rl_iteration: 5\n")
        args += ["--config", str(tmp_path / "bad.yaml")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "ctdeblur-evaluate: error:" in error and message in error, error
