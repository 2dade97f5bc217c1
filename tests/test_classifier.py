"""Organelle classifier and CLS-LPIPS: labelled data, ResNet state-dict checks, the metric's invariants, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from scipy import ndimage

from dm4isl.data.classes import LabelledDataset, labelled_arrays
from dm4isl.data.synthetic import FL_BACKGROUND_RANGE, FL_GAIN_RANGE, dataset_key, generate_fov
from dm4isl.errors import CheckpointError
from dm4isl.evaluation import evaluate_folder
from dm4isl.io.atomic import write_tiff
from dm4isl.metrics.perceptual import FEATURE_LAYERS, ClassifierFeatures, layer_distances
from dm4isl.metrics.registry import CLS_LPIPS, METRIC_SETS, METRICS, PairContext, patch_metrics, resolve_metric_names
from dm4isl.metrics.texture import perceptual_distance
from dm4isl.metrics.volume import VolumeFeatures
from dm4isl.models.checkpoint import load_model
from dm4isl.models.classifier import (
    ClassifierModule,
    confusion_matrix,
    confusion_summary,
    intensity_jitter,
    logistic_regression_accuracy,
    summary_statistics,
)
from dm4isl.models.nets.resnet3d import build_resnet3d, load_resnet_state_dict
from dm4isl.prediction.classifier import ClassifierSpec, load_feature_extractor
from dm4isl.train import train

#: A CPU-sized classifier network (ResNet-10 at quarter width: 0.9 M parameters).
TINY_NET = {"depth": 10, "widen_factor": 0.25}
#: Plain-state-dict settings of the tiny network for the evaluation (trained on (Z, Y, X) inputs).
TINY_SPEC = {"net": {"name": "resnet3d", **TINY_NET}, "input_axes": "ZYX"}
#: Small labelled synthetic data: 4 FOVs per organelle of 32 x 96 x 96, FOV-to-FOV staining variation.
#: The first synthetic generator (data=synthetic_v1): its 30 px cells give these small FOVs (4 × 96 × 96 px per
#: organelle) a dozen cells each; the calibrated generator's 54 px cells leave 3-4, too few to learn six classes from
#: in the test's budget.
SMALL_CLASSES = [
    "experiment=classifier_cpu", "data@data.datamodule=synthetic_v1", "model/net=resnet10",
    "model.net.widen_factor=0.25",
    "data.datamodule.n_fovs=4", "data.datamodule.fov_shape=[32,96,96]", "data.datamodule.n_val_patches=4",
    "data.datamodule.n_test_patches=8", "data.datamodule.samples_per_epoch=48", "data.datamodule.batch_size=8",
    "data.datamodule.split_fractions={train:0.5,val:0.25,test:0.25}",
]
#: Blur strengths (Gaussian sigma in voxels, Z/Y/X) for the monotonicity check.
BLUR_SIGMAS = (0.5, 1.0, 2.0, 4.0)


def _random_net(seed: int = 0, num_classes: int = 6) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_resnet3d(TINY_NET, num_classes=num_classes).eval()


def _volume(seed: int = 0, shape: tuple[int, int, int] = (16, 64, 64)) -> np.ndarray:
    """A blobby (Z, Y, X) volume in [0, 1] with structure at several scales."""
    rng = np.random.default_rng(seed)
    vol = ndimage.gaussian_filter(rng.random(shape), (1.0, 2.0, 2.0)) + 0.3 * rng.random(shape)
    vol -= vol.min()
    return (vol / vol.max()).astype(np.float32)


# --- the network and its state dicts ------------------------------------------------------------------------------
def test_resnet101_is_the_reference_layout() -> None:
    with torch.device("meta"):  # shapes and keys only: no memory, no initialisation
        net = build_resnet3d({"depth": 101})
    keys = net.state_dict().keys()
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(85.2e6, rel=0.01)
    assert "layer3.22.conv3.weight" in keys and "layer3.23.conv1.weight" not in keys  # blocks [3, 4, 23, 3]
    assert tuple(net.conv1.weight.shape) == (64, 1, 7, 7, 7) and tuple(net.conv1.stride) == (1, 2, 2)
    assert not any(k.endswith("downsample.0.bias") for k in keys) and tuple(net.fc.weight.shape) == (6, 2048)
    with torch.device("meta"):
        assert net.eval()(torch.zeros(1, 1, 16, 64, 64)).shape == (1, 6)


def test_wrong_state_dict_key_is_named(tmp_path: Path) -> None:
    state = _random_net().state_dict()
    state["layer2.0.conv_one.weight"] = state.pop("layer2.0.conv1.weight")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): layer2\.0\.conv_one\.weight") as err:
        load_resnet_state_dict(TINY_NET, state, "cls.pth")
    assert "missing key(s): layer2.0.conv1.weight" in str(err.value) and "cls.pth" in str(err.value)
    path = tmp_path / "CLS.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="layer2.0.conv_one.weight"):
        load_feature_extractor(ClassifierSpec(path=str(path), net='{"depth": 10, "widen_factor": 0.25}'))


def test_wrong_shape_and_wrong_depth_are_listed() -> None:
    with pytest.raises(CheckpointError, match=r"fc\.weight: found \(5, 128\), expected \(6, 128\)"):
        load_resnet_state_dict(TINY_NET, _random_net(num_classes=5).state_dict(), "five.pth")
    with pytest.raises(CheckpointError, match=r"missing key\(s\): layer1\.1\.bn1\.bias"):
        load_resnet_state_dict({"depth": 18, "widen_factor": 0.25}, _random_net().state_dict(), "ten.pth")


def test_plain_state_dict_layouts_load_and_give_the_same_features() -> None:
    net = _random_net()
    vol = _volume()[None]
    expected = ClassifierFeatures(net).features(vol)
    wrapped = {f"module.{k}": v for k, v in net.state_dict().items()}  # nn.DataParallel
    again = ClassifierFeatures(load_resnet_state_dict(TINY_NET, wrapped)).features(vol)
    assert all(torch.equal(a, b) for a, b in zip(expected, again, strict=True))
    torch.manual_seed(1)
    monai_default = build_resnet3d({**TINY_NET, "bias_downsample": True})  # MONAI's default layout: shortcut bias
    loaded = load_resnet_state_dict(TINY_NET, monai_default.state_dict())
    assert loaded.layer2[0].downsample[0].bias is not None


def test_input_axes_permute_like_the_reference() -> None:
    net = _random_net()
    vol = _volume()
    reference = ClassifierFeatures(net, input_axes="YXZ").features(vol[None])
    with torch.no_grad():  # the reference fed (B, C, Y, X, Z) tensors
        direct = net(torch.from_numpy(np.moveaxis(vol, 0, -1)).reshape(1, 1, 64, 64, 16))
    assert torch.allclose(reference[-1], direct)
    ours = ClassifierFeatures(net).features(vol[None])
    assert [f.shape[2:] for f in reference[:4]] != [f.shape[2:] for f in ours[:4]]


# --- the metric ----------------------------------------------------------------------------------------------------
def test_cls_lpips_is_zero_for_identical_volumes_and_grows_with_blur() -> None:
    features = ClassifierFeatures(_random_net())
    vol = _volume()
    assert perceptual_distance(vol, vol.copy(), features) == 0.0
    blurred = [np.clip(ndimage.gaussian_filter(vol, s), 0, 1) for s in BLUR_SIGMAS]
    distances = [perceptual_distance(vol, b, features) for b in blurred]
    assert all(d > 0 for d in distances)
    assert distances == sorted(distances) and distances[-1] > 2 * distances[0]
    per_layer = layer_distances(features.features(vol[None]), features.features(blurred[-1][None]))
    assert len(per_layer) == len(FEATURE_LAYERS) == 5
    assert distances[-1] == pytest.approx(float(np.mean(per_layer)), rel=1e-6)


def _hand_net() -> torch.nn.Module:
    """A classifier with hand-set weights: layer1 = 2x; layer2 = (x, −x); layer3 = ReLU; layer4 = mean over voxels per
    channel; fc = sum of the two channels."""
    from collections import OrderedDict

    layer1, layer2 = torch.nn.Conv3d(1, 1, 1, bias=False), torch.nn.Conv3d(1, 2, 1, bias=False)
    fc = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer1.weight.fill_(2.0)
        layer2.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1, 1))
        fc.weight.fill_(1.0)
    return torch.nn.Sequential(OrderedDict(layer1=layer1, layer2=layer2, layer3=torch.nn.ReLU(),
                                           layer4=torch.nn.AdaptiveAvgPool3d(1), flatten=torch.nn.Flatten(), fc=fc))


def test_cls_lpips_of_a_hand_computed_pair() -> None:
    """Ground truth 0 everywhere; prediction 0.5 on half of the voxels, 0 on the others. Per layer, the mean squared
    feature difference: layer1 (2·0.5 = 1 on half) 0.5; layer2 (±1 on half, 2 channels) 0.5; layer3 (ReLU keeps 1 on
    half of one channel) 0.25; layer4 (channel means 0.5, 0) 0.125; fc (0.5) 0.25. CLS-LPIPS = 1.625 / 5 = 0.325."""
    gt = np.zeros((2, 16, 16), np.float32)
    pred = gt.copy()
    pred[:, :8] = 0.5
    features = ClassifierFeatures(_hand_net())
    assert layer_distances(features.features(gt[None]), features.features(pred[None])) == pytest.approx(
        [0.5, 0.5, 0.25, 0.125, 0.25])
    assert perceptual_distance(gt, pred, features) == pytest.approx(0.325)
    assert perceptual_distance(pred, gt, features) == pytest.approx(0.325)
    assert perceptual_distance(gt, pred) != pytest.approx(0.325, rel=0.05)  # the random-feature distance is another


def test_a_bare_network_is_wrapped_with_the_default_settings() -> None:
    """perceptual_distance given the network itself: the same 0.325 as the hand-computed pair above."""
    gt = np.zeros((2, 16, 16), np.float32)
    pred = gt.copy()
    pred[:, :8] = 0.5
    assert perceptual_distance(gt, pred, _hand_net()) == pytest.approx(0.325)


class _CountingFeatures(ClassifierFeatures):
    """Counts the calls of :meth:`features`."""

    calls = 0

    def features(self, volumes: np.ndarray) -> list[torch.Tensor]:
        self.calls += 1
        return super().features(volumes)


def test_classifier_features_are_computed_once_per_classifier() -> None:
    """A volume's features in one classifier are computed on first use and then returned as they are; another
    classifier gets its own."""
    first, second = _CountingFeatures(_hand_net()), _CountingFeatures(_hand_net())
    volume = VolumeFeatures(np.zeros((2, 8, 8), np.float32))
    features = volume.classifier_features(first)
    assert volume.classifier_features(first) is features and first.calls == 1
    assert volume.classifier_features(second) is not features and second.calls == 1
    assert volume.classifier_features(first) is features and volume.classifier_features(second) is not features
    assert (first.calls, second.calls) == (1, 1)


def test_cls_lpips_without_a_classifier_says_how_to_give_one() -> None:
    vol = np.zeros((2, 8, 8), np.float32)
    expected = ("cls_lpips needs an organelle classifier: pass classifier= (dm4isl-evaluate "
                "perceptual.classifier=<checkpoint>)")
    with pytest.raises(ValueError) as raised:
        METRICS[CLS_LPIPS].fn(PairContext(vol, vol))
    assert str(raised.value) == expected


def test_classifier_feature_settings_and_messages() -> None:
    """The wrapper keeps its settings, freezes the network, and names itself and what is missing in its errors."""
    net = _hand_net()
    features = ClassifierFeatures(net, input_axes="YXZ")
    assert (features.input_axes, features.name, features.layers) == ("YXZ", "classifier", FEATURE_LAYERS)
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError) as raised:
        ClassifierFeatures(_hand_net(), layers=("layer1", "head"))
    assert str(raised.value) == ("classifier: the network has no sub-module(s) ['head']; expected all of "
                                 "['layer1', 'head']")
    with pytest.raises(ValueError) as raised:
        ClassifierFeatures(_hand_net(), input_axes="ZYY", name="CLS.pth")
    assert str(raised.value) == "CLS.pth: input_axes 'ZYY'; expected a permutation of 'ZYX'"
    with pytest.raises(ValueError) as raised:
        layer_distances([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])
    assert str(raised.value) == "2 ground-truth and 1 prediction feature layers"


def test_features_of_a_batch_and_of_float64_volumes() -> None:
    """Features of two volumes at once are those of each alone (the channel norm is taken per volume and voxel), and
    a float64 volume gives the features of its float32 copy."""
    rng = np.random.default_rng(4)
    volumes = rng.random((2, 2, 8, 8))
    features = ClassifierFeatures(_hand_net(), normalize=True)
    both = features.features(volumes)
    for i in range(2):
        alone = features.features(volumes[i : i + 1].astype(np.float32))
        for f_both, f_alone in zip(both, alone, strict=True):
            torch.testing.assert_close(f_both[i : i + 1], f_alone)


def test_channel_normalisation_of_feature_vectors_near_zero() -> None:
    """f / (|f| + 1e-10): a voxel whose feature vector has norm 1e-10 becomes half a unit vector."""
    features = ClassifierFeatures(_hand_net(), layers=("layer2",), normalize=True)
    tiny = np.full((1, 1, 2, 2), 1e-10 / np.sqrt(8.0))  # layer2 = (2x, -2x): norm sqrt(8) x = 1e-10
    (f,) = features.features(tiny)
    torch.testing.assert_close(f, torch.tensor([0.5, -0.5]).reshape(1, 2, 1, 1, 1).expand(1, 2, 1, 2, 2) / np.sqrt(2.0))


def test_cls_lpips_differs_from_the_random_feature_distance() -> None:
    features = ClassifierFeatures(_random_net())
    vol = _volume()
    rng = np.random.default_rng(3)
    blurred = np.clip(ndimage.gaussian_filter(vol, 1.5), 0, 1)
    noisy = np.clip(vol + rng.normal(0, 0.1, vol.shape), 0, 1).astype(np.float32)
    cls = [perceptual_distance(vol, x, features) for x in (blurred, noisy)]
    rnd = [perceptual_distance(vol, x) for x in (blurred, noisy)]
    assert cls[0] != pytest.approx(rnd[0], rel=0.05) and cls[1] != pytest.approx(rnd[1], rel=0.05)
    # not a rescaled copy either: the two degradations are weighted differently
    assert cls[0] / cls[1] != pytest.approx(rnd[0] / rnd[1], rel=0.1)


def test_channel_normalised_features_have_unit_norm() -> None:
    feats = ClassifierFeatures(_random_net(), normalize=True).features(_volume()[None])
    for f in feats:
        norms = torch.sqrt((f * f).sum(dim=1))
        assert torch.allclose(norms[norms > 0], torch.ones(()), atol=1e-4)


def test_cls_lpips_needs_a_classifier_and_is_named_apart() -> None:
    assert CLS_LPIPS not in METRIC_SETS["all"]
    with pytest.raises(ValueError, match="need an organelle classifier"):
        resolve_metric_names([CLS_LPIPS])
    names = resolve_metric_names("paper", with_classifier=True)
    assert names[names.index("perceptual_distance") + 1] == CLS_LPIPS
    assert METRICS["perceptual_distance"].label == "perceptual_distance (random features)"
    assert METRICS[CLS_LPIPS].label.startswith("cls_lpips")
    vol = _volume()
    values = patch_metrics(vol, vol, ["pcc"], classifier=ClassifierFeatures(_random_net()))
    assert values == {"pcc": pytest.approx(1.0), CLS_LPIPS: 0.0}


def test_evaluate_folder_reports_both_perceptual_distances(tmp_path: Path) -> None:
    net_path = tmp_path / "CLS.pth"
    torch.save(_random_net().state_dict(), net_path)
    for i in range(3):
        gt = _volume(i)
        for method, vol in {"GT": gt, "Unet": np.clip(ndimage.gaussian_filter(gt, 2), 0, 1), "DDPM": gt}.items():
            write_tiff(tmp_path / "in" / method / f"{i}.tiff", vol.astype(np.float32))
    spec = ClassifierSpec.from_config({"classifier": str(net_path), **TINY_SPEC})
    result = evaluate_folder(tmp_path / "in", tmp_path / "out", metrics=["pcc", "perceptual_distance"],
                             n_resamples=99, progress=False, classifier=spec)
    assert result.metric_names == ["pcc", "perceptual_distance", CLS_LPIPS]
    cls = result.results["DDPM"].per_patch[CLS_LPIPS]
    assert np.all(cls == 0) and np.all(result.results["Unet"].per_patch[CLS_LPIPS] > 0)
    table = (tmp_path / "out" / "metrics_summary.md").read_text()
    assert "perceptual_distance (random features)↓" in table and "cls_lpips (classifier features)↓" in table
    plain = evaluate_folder(tmp_path / "in", None, metrics=["perceptual_distance"], n_resamples=99, progress=False)
    assert plain.metric_names == ["perceptual_distance"]


# --- data and model ------------------------------------------------------------------------------------------------
def test_confusion_matrix_and_summary() -> None:
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    summary = confusion_summary(matrix)
    assert summary["acc"] == pytest.approx(4 / 6)
    assert summary["balanced_acc"] == pytest.approx((0.5 + 1 + 2 / 3) / 3) and np.isnan(summary["recall"][3])


def test_labelled_dataset_interleaves_and_concatenates() -> None:
    a = [{"fl": torch.zeros(1), "name": f"a{i}"} for i in range(3)]
    b = [{"fl": torch.ones(1), "name": f"b{i}"} for i in range(2)]
    mixed = LabelledDataset([a, b], ["x", "y"], interleave=True)
    assert len(mixed) == 4 and [mixed[i]["name"] for i in range(4)] == ["x/a0", "y/b0", "x/a1", "y/b1"]
    assert [int(mixed[i]["label"]) for i in range(4)] == [0, 1, 0, 1]
    resumed = LabelledDataset([a, b], ["x", "y"], interleave=True, offset=1)
    assert len(resumed) == 3 and resumed[0]["name"] == "y/b0" and int(resumed[0]["index"]) == 1
    whole = LabelledDataset([a, b], ["x", "y"])
    assert len(whole) == 5 and whole[3]["name"] == "y/b0" and int(whole[4]["label"]) == 1


def test_synthetic_fov_intensity_variation_changes_only_the_fluorescence() -> None:
    windows = {"bf_window": (10000, 55000), "fl_window": (385, 800)}
    plain = generate_fov("mitochondria", (16, 48, 48), 5, **windows)
    default = generate_fov("mitochondria", (16, 48, 48), 5, **windows, fl_gain_range=FL_GAIN_RANGE,
                           fl_background_range=FL_BACKGROUND_RANGE)
    assert np.array_equal(plain.fl, default.fl) and plain.meta == default.meta and "fl_gain" not in plain.meta
    varied = generate_fov("mitochondria", (16, 48, 48), 5, **windows, fl_gain_range=(0.5, 2.0),
                          fl_background_range=(0.02, 0.15))
    assert np.array_equal(plain.bf, varied.bf) and np.array_equal(plain.ambiguous, varied.ambiguous)
    assert not np.array_equal(plain.fl, varied.fl)
    assert 0.5 <= varied.meta["fl_gain"] <= 2.0 and 0.02 <= varied.meta["fl_background"] <= 0.15
    key = dataset_key("dna", (32, 128, 128), 0, (1, 2), (3, 4), 0.15)
    assert key == dataset_key("dna", (32, 128, 128), 0, (1, 2), (3, 4), 0.15, FL_GAIN_RANGE, FL_BACKGROUND_RANGE)
    assert key != dataset_key("dna", (32, 128, 128), 0, (1, 2), (3, 4), 0.15, (0.5, 2.0), FL_BACKGROUND_RANGE)
    with pytest.raises(ValueError, match="fl_gain_range"):
        generate_fov("dna", (16, 48, 48), 5, **windows, fl_gain_range=(0.0, 2.0))


def test_intensity_jitter_is_per_patch_and_reproducible() -> None:
    fl = torch.full((3, 1, 2, 4, 4), 0.5)
    ids = torch.tensor([7, 8, 7])
    out = intensity_jitter(fl, ids, (0.5, 2.0), (-0.05, 0.05), seed=1)
    assert torch.equal(out, intensity_jitter(fl, ids, (0.5, 2.0), (-0.05, 0.05), seed=1))
    values = out[:, 0, 0, 0, 0]
    assert values[0] == values[2] and values[0] != values[1]  # the patch id decides
    assert torch.all((values >= 0.5 * 0.5 - 0.05) & (values <= 1.0)) and torch.all(out == out[:, :, :1, :1, :1])
    assert torch.equal(intensity_jitter(fl, ids, (1.0, 1.0), (0.0, 0.0)), fl)


def test_organelle_classes_datamodule(compose_cfg) -> None:
    cfg = compose_cfg("train", SMALL_CLASSES)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert dm.class_names == ["dna", "mitochondria", "nuclear_envelope", "nucleoli", "actin", "microtubules"]
    windows = {name: m.organelle["fl_window"] for name, m in dm.modules.items()}
    assert windows["microtubules"] == [395, 5000] and windows["dna"] == [380, 650]  # each organelle's own window
    batch = next(iter(dm.train_dataloader()))
    assert batch["fl"].shape == (8, 1, 16, 64, 64) and batch["label"].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert batch["name"][1].startswith("mitochondria/")
    test_fl, test_y = labelled_arrays(dm.labelled("test"))
    assert np.bincount(test_y).tolist() == [8] * 6 and 0 <= test_fl.min() and test_fl.max() <= 1
    splits = sorted(p.name for p in Path(cfg.paths.output_dir).glob("split_*.csv"))
    assert splits == sorted(f"split_{n}.csv" for n in dm.class_names)
    module = instantiate(cfg.model, patch_size=[16, 64, 64], _convert_="all")
    assert isinstance(module, ClassifierModule) and module.class_names == dm.class_names
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassifierModule(net=TINY_NET, organelles=None)


def test_summary_statistic_baseline_separates_what_it_can() -> None:
    rng = np.random.default_rng(0)
    means = np.repeat([0.2, 0.5, 0.8], 40)
    fl = np.clip(means[:, None, None, None] + rng.normal(0, 0.02, (120, 2, 4, 4)), 0, 1)
    labels = np.repeat([0, 1, 2], 40)
    acc, matrix = logistic_regression_accuracy(summary_statistics(fl[::2]), labels[::2], summary_statistics(fl[1::2]),
                                               labels[1::2], 3)
    assert acc == 1.0 and matrix.trace() == 60
    same = np.clip(0.5 + rng.normal(0, 0.02, (120, 2, 4, 4)), 0, 1)
    acc, _ = logistic_regression_accuracy(summary_statistics(same[::2]), labels[::2], summary_statistics(same[1::2]),
                                          labels[1::2], 3)
    assert acc < 0.6


@pytest.mark.slow
def test_classifier_learns_beyond_the_summary_statistic_baseline(compose_cfg) -> None:
    """A small classifier, 360 steps on the synthetic organelles, beats a logistic regression on patch mean/std."""
    cfg = compose_cfg("train", [*SMALL_CLASSES, "model.net.widen_factor=0.5", "data.datamodule.n_fovs=12",
                                "trainer.max_steps=360", "trainer.max_epochs=50", "trainer.check_val_every_n_epoch=1",
                                "trainer.max_time=null", "logger=csv"])
    metrics = train(cfg)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    train_fl, train_y = labelled_arrays(dm.train_dataloader().dataset)
    test_fl, test_y = labelled_arrays(dm.labelled("test"))
    baseline, _ = logistic_regression_accuracy(summary_statistics(train_fl), train_y, summary_statistics(test_fl),
                                               test_y, 6)
    assert metrics["test/acc"] >= baseline + 0.2, (metrics["test/acc"], baseline)
    out = Path(cfg.paths.output_dir)
    confusion = sorted((out / "confusion").glob("test_*.csv"))
    assert confusion and confusion[-1].read_text().startswith("true,dna,mitochondria")
    best = sorted((out / "checkpoints").glob("epoch*.ckpt"))[-1]
    model = load_model(best)
    assert isinstance(model, ClassifierModule) and model.class_names == dm.class_names
    features = load_feature_extractor(ClassifierSpec(path=str(best)))
    assert features.input_axes == "ZYX" and perceptual_distance(test_fl[0], test_fl[0], features) == 0.0
    assert perceptual_distance(test_fl[0], test_fl[1], features) > 0
