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
    recipe = DemoRecipe()
    assert card.architecture == "ichnet_seq" and card.labels == LABELS
    assert card.windows == recipe.windows and card.input_size == recipe.input_size
    assert card.context == recipe.context
    assert "synthetic" in card.training_data and "no patient data" in card.training_data
    assert f"phantom seed {recipe.seed}" in card.training_data
    assert recipe.command() in card.training_data
    assert "NOT FOR CLINICAL USE" in card.intended_use
    assert card.metrics["recipe"] == recipe.to_dict()  # the shipped file is the default recipe's
    assert 0 < card.thresholds["any"] < 1


def test_each_style_has_its_recipe_and_command() -> None:
    classic, robust = DemoRecipe(), DemoRecipe.for_style("randomized", slice_epochs=10)
    assert classic.style == "classic" and not classic.augment
    assert "style" not in classic.to_dict()  # cards written before styles still match
    assert (robust.style, robust.augment, robust.positive_fraction, robust.val_fraction) == (
        "randomized", True, 0.6, 0.2)  # fmt: skip
    assert robust.to_dict()["style"] == "randomized" and "shift" not in robust.to_dict()
    assert robust.command() == "ichtriage admin demo-model --seed 1 --style randomized --epochs 10"
    assert "randomized studies" in robust.training_data()
    mixed = DemoRecipe.for_style("randomized", classic_studies=100)
    assert mixed.command() == ("ichtriage admin demo-model --seed 1 --style randomized "
                               "--classic-studies 100")
    assert mixed.to_dict()["classic_studies"] == 100 and "classic_studies" not in robust.to_dict()
    assert "and 100 classic studies of 24 slices, phantom seed 5001" in mixed.training_data()
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
    from node.cli.main import build_parser

    args = build_parser().parse_args(["admin", "demo-model"])
    recipe = DemoRecipe()
    assert (args.seed, args.studies, args.slices, args.input_size, args.epochs,
            args.series_epochs) == (recipe.seed, recipe.studies, recipe.slices, recipe.input_size,
                                    recipe.slice_epochs, recipe.series_epochs)  # fmt: skip
    assert recipe.command() == "ichtriage admin demo-model --seed 1"
