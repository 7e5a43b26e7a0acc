"""The shipped demo model: intact, honestly carded, and it finds a bleed it has not seen."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ml.checkpoint import card_path, read_checkpoint
from ml.demo import DemoRecipe
from ml.inference import Classifier
from ml.labels import LABELS
from ml.phantom import make_volume
from ml.shipped import shipped_checkpoint

# held-out phantoms: seeds the recipe's generator never used (it draws studies from seed 1)
SUBDURAL_SEED, NORMAL_SEED = 90210, 90211
SLICES = 16


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    torch.set_num_threads(2)
    return Classifier.load(shipped_checkpoint(), device="cpu")


def test_shipped_file_is_intact_and_small() -> None:
    path = shipped_checkpoint()
    assert path.stat().st_size <= 20 * 1024 * 1024
    card, state_dict = read_checkpoint(path)  # verifies format, label order, sha256, fit
    written = json.loads(card_path(path).read_text(encoding="utf-8"))
    assert written == card.to_dict()  # the card next to the file is the one inside it
    assert len(card.sha256) == 64 and state_dict


def test_card_says_synthetic_and_not_for_clinical_use() -> None:
    card, _ = read_checkpoint(shipped_checkpoint())
    recipe = DemoRecipe.shipped()
    assert card.architecture == "ichnet_seq" and card.labels == LABELS
    assert card.windows == recipe.windows and card.input_size == recipe.input_size
    assert card.context == recipe.context
    assert "synthetic" in card.training_data and "no patient data" in card.training_data
    assert f"phantom seed {recipe.seed}" in card.training_data
    assert recipe.command() in card.training_data
    assert "NOT FOR CLINICAL USE" in card.intended_use
    assert card.metrics["recipe"] == recipe.to_dict()  # the shipped file is the default recipe's
    assert recipe.command() == "ichtriage admin demo-model --seed 1"
    assert 0 < card.thresholds["any"] < 1


def test_each_style_has_its_recipe_and_command() -> None:
    classic, shipped = DemoRecipe(), DemoRecipe.shipped()
    assert classic == DemoRecipe.for_style("classic") and not classic.augment
    assert "style" not in classic.to_dict()  # cards written before styles still match
    assert classic.command() == "ichtriage admin demo-model --seed 1 --style classic"
    assert (shipped.style, shipped.augment, shipped.positive_fraction, shipped.val_fraction,
            shipped.slice_epochs, shipped.series_epochs, shipped.classic_studies) == (
        "randomized", True, 0.6, 0.2, 10, 3, 100)  # fmt: skip
    assert shipped.to_dict()["style"] == "randomized" and "shift" not in shipped.to_dict()
    assert "randomized studies" in shipped.training_data()
    assert "and 100 classic studies of 24 slices, phantom seed 5001" in shipped.training_data()
    alone = DemoRecipe.for_style("randomized", classic_studies=0, slice_epochs=12)
    assert alone.command() == ("ichtriage admin demo-model --seed 1 --epochs 12 "
                               "--classic-studies 0")
    assert "classic_studies" not in alone.to_dict()
    polar = DemoRecipe.for_style("polar")
    assert polar.command() == "ichtriage admin demo-model --seed 1 --style polar"
    assert polar.classic_studies == 0 and polar.augment
    with pytest.raises(ValueError, match="classic_studies"):
        DemoRecipe(classic_studies=10)  # classic beside classic


def _series(seed: int, subtypes: tuple[str, ...]) -> tuple[list[np.ndarray], np.ndarray]:
    hu, labels = make_volume(np.random.default_rng(seed), slices=SLICES, size=512, subtypes=subtypes)
    return list(hu), labels


def test_finds_a_subdural_bleed_it_has_not_seen(classifier: Classifier) -> None:
    slices, labels = _series(SUBDURAL_SEED, ("subdural",))
    assert labels[:, LABELS.index("subdural")].any()
    prediction = classifier.predict_series(slices)
    assert prediction.calls["any"] and prediction.calls["subdural"]
    thresholds = classifier.card.thresholds
    assert prediction.series[LABELS.index("subdural")] >= thresholds["subdural"]
    key = prediction.key_slices["subdural"]
    assert labels[key, LABELS.index("subdural")] == 1  # it points at a slice with the bleed


def test_leaves_a_normal_head_below_threshold(classifier: Classifier) -> None:
    slices, labels = _series(NORMAL_SEED, ())
    assert not labels.any()
    prediction = classifier.predict_series(slices)
    assert not prediction.calls["any"]
    assert prediction.series[0] < classifier.card.thresholds["any"]


def test_command_defaults_are_the_recipe() -> None:
    from node.cli.demo import demo_recipe
    from node.cli.main import build_parser

    def recipe_of(*options: str) -> DemoRecipe:
        return demo_recipe(build_parser().parse_args(["admin", "demo-model", *options]))

    assert recipe_of() == DemoRecipe.shipped()
    assert recipe_of("--style", "classic") == DemoRecipe()
    for recipe in (DemoRecipe.shipped(), DemoRecipe(), DemoRecipe.for_style("polar", seed=3),
                   DemoRecipe.for_style("randomized", slice_epochs=2, classic_studies=0),
                   DemoRecipe.for_style("varied"),
                   DemoRecipe.for_style("classic", lr_schedule="cosine")):
        options = recipe.command().split()[3:]  # the printed command rebuilds its recipe
        assert recipe_of(*options) == recipe
