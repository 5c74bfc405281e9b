"""`medxgan evaluate`: every metric against hand-computed values on tiny arrays, the experiments on
toy models, and the CLI end to end on the quick demo run."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import assert_one_line_error, run_cli
from medxgan.evaluate.localisation import localisation_scores
from medxgan.evaluate.perturbation import counterfactual_drop, curve_area, perturbation_curves, saliency_order
from medxgan.evaluate.realism import extract_features, frechet_distance, train_feature_network
from medxgan.evaluate.registry import EvalContext, ExperimentResult, Table, get_experiment, list_experiments, mean_std_ci
from medxgan.evaluate.report import format_cell, write_evaluation
from medxgan.evaluate.sparsity import gini_index, nonzero_fraction
from medxgan.inversion import InversionConfig
from medxgan.models.classifier import BinaryClassifier
from toy_models import lesion_images, tiny_models


# --- a classifier that keys on a planted bright lesion -------------------------------------

class BrightSpotNet(nn.Module):
    """Positive log-odds = sum of relu(x - 0.5) - 4: only pixels brighter than 0.5 count, so a
    4x4 lesion at 1.0 on a background <= 0 gives log-odds +4 and without it -4."""

    def __init__(self):
        super().__init__()
        self.offset = nn.Parameter(torch.tensor([-4.0]))

    def forward(self, x):  # [B,1,H,W] in [-1,1] -> [B,1]
        return torch.relu(x - 0.5).flatten(1).sum(1, keepdim=True) + self.offset


@pytest.fixture(scope="module")
def lesion_setup():
    torch.manual_seed(0)
    classifier = BinaryClassifier(BrightSpotNet(), 1).frozen()
    images, masks = lesion_images()
    return classifier, images, masks


def test_deletion_of_the_lesion_drops_p_more_than_a_random_map(lesion_setup):
    classifier, images, masks = lesion_setup
    lesion_map = masks.float()  # exactly the pixels the classifier keys on
    random_map = torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    p_image = classifier.positive_prob(images)
    assert (p_image > 0.95).all()
    # 10 % of 256 pixels = 26 >= the 16 lesion pixels: the lesion map removes the whole lesion.
    drop_lesion = counterfactual_drop(classifier, images, lesion_map, fraction=0.10)
    drop_random = counterfactual_drop(classifier, images, random_map, fraction=0.10)
    expected = (p_image - torch.sigmoid(torch.tensor(-4.0))).numpy()
    np.testing.assert_allclose(drop_lesion, expected, atol=1e-6)
    assert drop_lesion.mean() > drop_random.mean() + 0.5
    lesion = perturbation_curves(classifier, images, lesion_map)
    rand = perturbation_curves(classifier, images, random_map)
    assert curve_area(lesion["fractions"], lesion["deletion"]).mean() < curve_area(rand["fractions"], rand["deletion"]).mean()
    assert curve_area(lesion["fractions"], lesion["insertion"]).mean() > curve_area(rand["fractions"], rand["insertion"]).mean()
    # Endpoints: k = 0 deletes nothing, k = 100 % insertion restores everything; both = P(image).
    np.testing.assert_allclose(lesion["deletion"][:, 0], p_image.numpy(), atol=1e-6)
    np.testing.assert_allclose(lesion["insertion"][:, -1], p_image.numpy(), atol=1e-6)
    # k = 100 % deletion is the mean image, the same for every map.
    np.testing.assert_allclose(lesion["deletion"][:, -1], rand["deletion"][:, -1], atol=1e-6)


def test_saliency_order_is_signed_and_breaks_ties_at_random():
    attributions = torch.tensor([[[[-5.0, 0.0], [3.0, 0.0]]]])  # [1,1,2,2]
    rank = saliency_order(attributions, seed=0)[0]
    assert rank[2] == 0  # +3 first
    assert rank[0] == 3  # -5 (evidence against positive) last, although largest in magnitude
    assert sorted(rank.tolist()) == [0, 1, 2, 3]
    flat = torch.zeros(1, 1, 8, 8)  # all ties: a permutation, not raster order
    rank = saliency_order(flat, seed=0)[0]
    assert sorted(rank.tolist()) == list(range(64)) and rank.tolist() != list(range(64))


def test_curve_area_hand_values():
    fractions = np.linspace(0, 1, 11)
    np.testing.assert_allclose(curve_area(fractions, np.ones((1, 11))), [1.0])
    np.testing.assert_allclose(curve_area(fractions, fractions[None]), [0.5])
    np.testing.assert_allclose(curve_area([0.0, 0.5, 1.0], [[1.0, 0.0, 0.0]]), [0.25])


def test_gini_index_hand_values():
    n = 16
    one_hot = torch.zeros(1, 1, 4, 4)
    one_hot[0, 0, 1, 2] = 3.0
    uniform = torch.full((1, 1, 4, 4), -0.7)  # magnitude is what counts
    assert gini_index(one_hot).item() == pytest.approx(1 - 1 / n)
    assert gini_index(uniform).item() == pytest.approx(0.0, abs=1e-12)
    # Two of four pixels equal, two zero: sorted c = (0, 0, 1/2, 1/2) -> 1 - 2 * (1/2 * 1.5/4 + 1/2 * 0.5/4) = 0.5
    half = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert gini_index(half).item() == pytest.approx(0.5)
    assert math.isnan(gini_index(torch.zeros(1, 1, 2, 2)).item())


def test_nonzero_fraction_hand_values():
    attributions = torch.tensor([[[[1.0, 0.005], [-0.02, 0.0]]]])  # [1,1,2,2]
    assert nonzero_fraction(attributions, eps_rel=0.01).item() == pytest.approx(0.5)  # |a| > 0.01: 1.0 and -0.02
    assert nonzero_fraction(attributions, eps_rel=0.0).item() == pytest.approx(0.75)
    # Channels are summed before thresholding: +1 and -1 cancel.
    two_channels = torch.tensor([[[[1.0, 1.0]]], [[[-1.0, 0.0]]]]).view(1, 2, 1, 2)
    assert nonzero_fraction(two_channels).item() == pytest.approx(0.5)


def test_localisation_scores_hand_values():
    # 4x4 map; lesion = top-left 2x2 block.
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2, :2] = True
    attributions = torch.zeros(1, 1, 4, 4)
    attributions[0, 0, 0, 0] = 5.0  # argmax inside
    attributions[0, 0, 0, 1] = 2.0
    attributions[0, 0, 1, 0] = 2.0
    attributions[0, 0, 3, 3] = 1.0  # outside, 4th of the top-4
    attributions[0, 0, 2, 2] = -3.0  # negative: ignored by mass and AUPRC
    scores = localisation_scores(attributions, mask)
    assert scores["pointing_game"][0] == 1.0
    assert scores["iou"][0] == pytest.approx(3 / 5)  # top-4 = 3 inside + 1 outside; union 5
    assert scores["mass"][0] == pytest.approx(9 / 10)
    # Ranking by positive part: 5, 2, 2 (inside), 1 (outside), then 12 tied zeros (1 inside).
    # AP = sum over thresholds of (recall step) * precision = 3 hits at precision 1 (recall 3/4),
    # then the tie block of 13 pixels at precision 4/16 for the last 1/4 of recall.
    assert scores["auprc"][0] == pytest.approx(0.75 * 1.0 + 0.25 * 4 / 16)
    outside = torch.zeros(1, 1, 4, 4)
    outside[0, 0, 3, 3] = 1.0
    assert localisation_scores(outside, mask)["pointing_game"][0] == 0.0
    assert math.isnan(localisation_scores(-outside, mask)["mass"][0])
    with pytest.raises(ValueError):
        localisation_scores(outside, torch.zeros_like(mask))


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 6))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    # Same covariance, shifted mean: the trace term vanishes, FD = ||mu1 - mu2||^2.
    assert frechet_distance(features, features + shift) == pytest.approx(float((shift**2).sum()), rel=1e-6)
    # 1-D: b = 2a has mean 2m and std 2s, so FD = (m - 2m)^2 + (s - 2s)^2 = m^2 + s^2.
    a = rng.normal(size=(2000, 1))
    b = 2 * a
    assert frechet_distance(a, b) == pytest.approx(float(a.mean() ** 2 + np.var(a, ddof=1)), rel=1e-9)
    with pytest.raises(ValueError):
        frechet_distance(features, features[:, :3])


def test_feature_network_is_seeded():
    torch.set_num_threads(1)
    images = torch.rand(24, 1, 16, 16) * 2 - 1
    a = extract_features(train_feature_network(images, epochs=1, seed=3), images[:5])
    b = extract_features(train_feature_network(images, epochs=1, seed=3), images[:5])
    assert a.shape == (5, 64)
    torch.testing.assert_close(a, b)


def test_mean_std_ci_small_arrays():
    s = mean_std_ci([1.0, 2.0, 3.0])
    assert s["mean"] == pytest.approx(2.0) and s["std"] == pytest.approx(1.0) and s["n"] == 3
    assert 1.0 <= s["ci95"][0] <= 2.0 <= s["ci95"][1] <= 3.0
    one = mean_std_ci([0.25])
    assert one == {"mean": 0.25, "std": 0.0, "ci95": [0.25, 0.25], "n": 1}
    assert mean_std_ci([1.0, float("nan"), 3.0])["n"] == 2
    assert mean_std_ci([])["n"] == 0


def test_registry_lists_my_experiments_in_order():
    names = list_experiments()
    mine = ["fidelity", "counterfactual", "sparsity", "localisation"]
    assert [n for n in names if n in mine] == mine
    from medxgan.errors import MedxganError

    with pytest.raises(MedxganError, match="known: .*fidelity"):
        get_experiment("no-such-experiment")


def test_report_writer(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    summary = {"mean": 0.5, "std": 0.1, "ci95": [0.4, 0.6], "n": 7}
    result = ExperimentResult(metrics={"lig_ig_nonzero_ratio": summary, "nan_value": float("nan")},
                              tables=[Table("t", ["method", "value"], [["lig", summary], ["a|b", 0.123456]], note="a note")],
                              figures={"curves": fig}, notes=["hello"])
    md = write_evaluation(tmp_path, {"sparsity": result}, {"command": "medxgan evaluate", "seed": 0, "timings": {"sparsity": 1.5}})
    data = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: NaN became null
    assert data["metrics"]["lig_ig_nonzero_ratio"] == summary and data["metrics"]["nan_value"] is None
    assert data["experiments"]["sparsity"]["figures"] == ["curves.png"] and data["experiments"]["sparsity"]["wall_s"] == 1.5
    text = md.read_text()
    assert "0.500 ± 0.100 [0.400, 0.600]" in text and "a\\|b" in text and "0.123" in text and "![curves](curves.png)" in text
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert format_cell({"mean": 1.0, "std": 0.0, "ci95": [1.0, 1.0], "n": 1}) == "1.000 ± 0.000"


def toy_context(**kw):
    torch.set_num_threads(1)
    G, C = tiny_models(size=16)
    images, masks = lesion_images(n=8, size=16, seed=2)
    labels = torch.tensor([1, 0] * 4)
    return EvalContext(G=G, C=C.frozen(), test_images=images, test_labels=labels, test_masks=masks,
                       reference_images=images, train_images=lesion_images(n=16, size=16, seed=3)[0],
                       train_labels=torch.tensor([1, 0] * 8), n_images=3, seed=0, quick=True, repeats=2,
                       inversion=InversionConfig(steps=3, restarts=1), **kw)


def test_explanation_experiments_on_toy_models():
    ctx = toy_context()
    counterfactual = get_experiment("counterfactual").fn(ctx)
    sparsity = get_experiment("sparsity").fn(ctx)
    localisation = get_experiment("localisation").fn(ctx)
    for method in ctx.methods:
        assert counterfactual.metrics[f"counterfactual_drop.{method}"]["n"] == 3
        assert 0 <= counterfactual.metrics[f"deletion_auc.{method}"]["mean"] <= 1
        assert len(counterfactual.metrics[f"deletion_curve.{method}"]) == 21
        assert 0 <= sparsity.metrics[f"sparsity.gini.{method}"]["mean"] <= 1
        for score in ("pointing_game", "auprc", "iou", "mass"):
            assert 0 <= localisation.metrics[f"localization.{method}.{score}"]["mean"] <= 1
    assert "counterfactual_curves" in counterfactual.figures
    assert sparsity.metrics["lig_ig_nonzero_ratio"]["n"] == 3
    no_masks = toy_context(methods=("difference", "random"))
    no_masks.test_masks = None
    skipped = get_experiment("localisation").fn(no_masks)
    assert skipped.metrics["localization.n_images"] == 0 and "Skipped" in skipped.notes[0]


def test_tuned_explanations_change_only_the_latent_maps():
    """With ``tuning`` the shared explanations come from per-image tuned copies of G: the
    reconstruction fits better than the latent-only inversion, the latent maps change, and the
    maps that do not use G (Grad-CAM, IG) are the same as without tuning. The data-randomisation
    helper of ``sanity`` explains through tuned copies the same way."""
    from medxgan.evaluate.sanity import _maps
    from medxgan.tuning import TuningConfig

    tuning = TuningConfig(steps=40, lr=1e-3)
    methods = ("difference", "lig", "gradcam", "ig")
    plain, tuned = toy_context(methods=methods), toy_context(methods=methods, tuning=tuning)
    for e in tuned.explanations():
        assert e.quality["ssim"] > e.quality["ssim_latent"]
    for m in ("gradcam", "ig"):
        assert torch.allclose(plain.maps(m), tuned.maps(m), atol=1e-6)
    for m in ("difference", "lig"):
        assert not torch.allclose(plain.maps(m), tuned.maps(m), atol=1e-3)
    images = tuned.positives()[0]
    maps = _maps(tuned.G, tuned.C, images, ["difference", "gradcam"], tuned.inversion, 8, None, tuning)
    assert torch.allclose(maps["difference"], tuned.maps("difference"), atol=1e-5)
    assert torch.allclose(maps["gradcam"], plain.maps("gradcam"), atol=1e-6)


def test_convergence_from_an_encoder_start_is_exact_without_perturbation():
    """Hybrid convergence: identical starts (σ = 0) give identical solutions (cosine and SSIM 1);
    perturbed starts (σ > 0) begin apart, and the starts are what the seeds say."""
    from medxgan.evaluate.convergence import perturbed_start, restart_agreement

    torch.set_num_threads(1)
    G, C = tiny_models(size=16)
    images, _ = lesion_images(n=3, size=16, seed=4)
    init = (torch.randn(3, G.z1_dim, generator=torch.Generator().manual_seed(0)),
            torch.randn(3, G.code_dim, generator=torch.Generator().manual_seed(1)))
    cfg = InversionConfig(steps=5, restarts=1, patience=0)
    same = restart_agreement(G, C.frozen(), images, cfg, repeats=3, init=init, sigma=0.0)
    assert torch.allclose(same["cosine"], torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(same["ssim"], torch.ones(3, dtype=torch.float64), atol=1e-6)
    apart = restart_agreement(G, C.frozen(), images, cfg, repeats=3, init=init, sigma=1.0)
    assert float(apart["cosine"].max()) < 0.99
    a, b = perturbed_start(init, 0.5, seed=7), perturbed_start(init, 0.5, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert abs(float((a[0] - init[0]).std()) - 0.5) < 0.1


def test_fidelity_experiment_on_toy_models():
    ctx = toy_context()
    result = get_experiment("fidelity").fn(ctx)
    m = result.metrics
    assert m["generated_accuracy"]["n"] == 2 and 0 <= m["generated_accuracy"]["mean"] <= 1
    assert m["real_accuracy"]["n"] == 8 and 0 <= m["real_auc"]["mean"] <= 1
    assert 0 <= m["realism.c2st_accuracy"]["mean"] <= 1
    assert m["realism.frechet_distance"]["mean"] >= 0 and m["realism.frechet_distance_real_floor"]["n"] == 2
    assert m["fidelity.protocol"]["n_generated_per_repeat"] == 50 * 4


def test_cli_evaluate_quick(demo_run, tmp_path):
    run, _ = demo_run
    out = tmp_path / "eval"
    rc, so, se = run_cli("evaluate", "--model", run / "medxgan", "--data", run / "phantoms", "--out", out,
                         "--experiments", "fidelity,counterfactual,sparsity,localisation",
                         "--quick", "--n-images", "2", "--no-progress", "--device", "cpu")
    assert rc == 0, se
    data = json.loads((out / "metrics.json").read_text())
    metrics = data["metrics"]
    for key in ("generated_accuracy", "generated_auc", "real_accuracy", "real_auc", "realism.c2st_accuracy",
                "realism.frechet_distance", "counterfactual_drop.lig", "deletion_auc.gradcam", "insertion_auc.random",
                "lig_ig_nonzero_ratio", "localization.difference.pointing_game", "localization.ig.auprc"):
        assert {"mean", "std", "n"} <= set(metrics[key]), key
    assert data["meta"]["seed"] == 0 and data["meta"]["n_images"] == 2
    assert set(data["meta"]["timings"]) >= {"fidelity", "counterfactual", "sparsity", "localisation"}
    text = (out / "RESULTS.md").read_text()
    assert "paper Table 1" in text and "paper Table 2" in text and "±" in text
    assert (out / "counterfactual_curves.png").stat().st_size > 0

    rc, so, se = run_cli("evaluate", "--model", run / "medxgan", "--data", run / "phantoms", "--out", tmp_path / "bad",
                         "--experiments", "fidelity,nonsense")
    assert_one_line_error(rc, se, "unknown experiment 'nonsense'", "counterfactual")
    rc, so, se = run_cli("evaluate", "--list-experiments")
    assert rc == 0 and "localisation" in so
    # A second evaluation into the same folder would mix two runs' figures: refused, nothing touched.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, so, se = run_cli("evaluate", "--model", run / "medxgan", "--data", run / "phantoms", "--out", out,
                         "--experiments", "sparsity", "--quick", "--no-progress")
    assert_one_line_error(rc, se, "already holds a finished run", "metrics.json")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_cli_evaluate_with_generator_tuning(demo_run, tmp_path):
    run, _ = demo_run
    out = tmp_path / "eval_tuned"
    rc, so, se = run_cli("evaluate", "--model", run / "medxgan", "--data", run / "phantoms", "--out", out,
                         "--experiments", "localisation", "--methods", "difference,gradcam", "--quick", "--n-images", "2",
                         "--tune-steps", "5", "--tune-smooth-weight", "0.1", "--no-progress", "--device", "cpu")
    assert rc == 0, se
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["tuning"]["steps"] == 5 and meta["tuning"]["smooth_weight"] == 0.1
    assert "--tune-steps 5" in meta["command"] and "--tune-steps 5" in (out / "RESULTS.md").read_text()
    # tuning options are checked before the model is read
    rc, so, se = run_cli("evaluate", "--model", tmp_path / "missing", "--data", run / "phantoms", "--out", tmp_path / "x",
                         "--tune-lr", "1e-3")
    assert_one_line_error(rc, se, "need --tune-steps")
    assert not (tmp_path / "x").exists()
