"""The model registry on SQLite and PostgreSQL: import through the validating reader, one
active model held by the database, promote / rollback / retire as single transactions, and
bad input refused with the registry unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ml.checkpoint import ModelCard, card_path, save_checkpoint, weights_sha256
from ml.errors import ModelError
from ml.models import build_model
from node.triage.registry import (
    DEMO_NAME,
    ModelHolder,
    ModelUnavailableError,
    ensure_active_model,
    import_checkpoint,
)
from storage.models import Model, ModelEvent, ModelState
from storage.registry import (
    DuplicateModelError,
    ModelRegistry,
    ModelStateError,
    UnknownModelError,
    file_sha256,
)

WINDOWS = ("brain", "subdural", "bone")


def tiny_checkpoint(path: Path, *, seed: int, architecture: str = "ichnet") -> Path:
    torch.manual_seed(seed)
    card = ModelCard.new(architecture, windows=WINDOWS, input_size=32,
                         training_data=f"random weights, seed {seed}; registry test")
    model = build_model(architecture, in_channels=card.in_channels, input_size=32)
    save_checkpoint(path, model, card)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return [tiny_checkpoint(folder / f"m{i}.pt", seed=i) for i in range(3)]


@pytest.fixture
def registry(engine: Engine, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(engine, tmp_path / "models")


def snapshot(engine: Engine) -> tuple[list[tuple[Any, ...]], int]:
    """Every model row and the number of decisions: what 'registry unchanged' compares."""
    with engine.connect() as conn:
        models = [tuple(r) for r in conn.execute(select(Model.__table__).order_by(Model.id))]
        events = conn.execute(select(func.count()).select_from(ModelEvent)).scalar_one()
    return models, int(events)


def states(registry: ModelRegistry) -> dict[str, str]:
    return {e.name: e.state.value for e in registry.entries()}


def test_import_keeps_a_copy_card_and_metrics(registry: ModelRegistry,
                                              checkpoints: list[Path]) -> None:
    entry = import_checkpoint(registry, checkpoints[0], name="first", actor="alice",
                              reason="baseline")
    assert entry.state is ModelState.CANDIDATE and entry.architecture == "ichnet"
    card = json.loads(card_path(checkpoints[0]).read_text())
    assert entry.card == card and entry.weights_sha256 == card["sha256"]
    assert entry.version == card["sha256"][:12]
    assert entry.training_data == card["training_data"]
    assert entry.file_path.parent == registry.root.resolve() and entry.file_path.is_file()
    assert entry.file_path.read_bytes() == checkpoints[0].read_bytes()
    assert entry.source_path == str(checkpoints[0])
    (decision,) = registry.history("first")
    assert (decision.action, decision.to_state, decision.actor, decision.reason) == (
        "import", "candidate", "alice", "baseline")
    # default name: file stem and the weights' hash
    second = import_checkpoint(registry, checkpoints[1], actor="alice")
    assert second.name == f"m1-{second.weights_sha256[:8]}"


def test_promote_and_rollback_form_a_stack(registry: ModelRegistry,
                                           checkpoints: list[Path]) -> None:
    for i, path in enumerate(checkpoints):
        import_checkpoint(registry, path, name=f"m{i}", actor="alice")
    assert registry.active() is None and registry.active_ref() is None
    registry.promote("m0", actor="alice", reason="first")
    registry.promote("m1", actor="bob", reason="better AUC")
    registry.promote("m2", actor="carol", reason="newer")
    assert states(registry) == {"m0": "candidate", "m1": "candidate", "m2": "active"}
    active = registry.active()
    assert active is not None and (active.promoted_by, active.reason) == ("carol", "newer")
    ref = registry.active_ref()
    assert ref is not None and (ref.pk, ref.file_sha256) == (active.pk, active.file_sha256)
    assert registry.rollback(actor="dave").name == "m1"
    assert registry.rollback(actor="dave").name == "m0"
    with pytest.raises(ModelStateError, match="no earlier active model"):
        registry.rollback(actor="dave")
    assert states(registry) == {"m0": "active", "m1": "candidate", "m2": "candidate"}
    actions = [(d.model, d.action, d.previous) for d in registry.history()
               if d.to_state == "active"]
    assert actions == [("m0", "promote", None), ("m1", "promote", "m0"),
                       ("m2", "promote", "m1"), ("m1", "rollback", "m0"),
                       ("m0", "rollback", None)]


def test_retire_refuses_the_active_and_rollback_skips_nothing_silently(
        registry: ModelRegistry, checkpoints: list[Path]) -> None:
    for i, path in enumerate(checkpoints[:2]):
        import_checkpoint(registry, path, name=f"m{i}", actor="alice")
    registry.promote("m0", actor="alice")
    registry.promote("m1", actor="alice")
    before = snapshot(registry.engine)
    with pytest.raises(ModelStateError, match="m1 is the active model"):
        registry.retire("m1", actor="alice")
    assert snapshot(registry.engine) == before
    assert registry.retire("m0", actor="alice", reason="worse").state is ModelState.RETIRED
    with pytest.raises(ModelStateError, match="m0, is retired"):
        registry.rollback(actor="alice")
    with pytest.raises(ModelStateError, match="m0 is retired"):
        registry.promote("m0", actor="alice")
    with pytest.raises(ModelStateError, match="active model already"):
        registry.promote("m1", actor="alice")
    assert states(registry) == {"m0": "retired", "m1": "active"}


def test_unknown_names_are_refused_with_the_registry_unchanged(
        registry: ModelRegistry, checkpoints: list[Path]) -> None:
    import_checkpoint(registry, checkpoints[0], name="m0", actor="alice", activate=True)
    before = snapshot(registry.engine)
    for change in (lambda: registry.promote("nope", actor="a"),
                   lambda: registry.retire("nope", actor="a"), lambda: registry.get("nope"),
                   lambda: registry.history("nope")):
        with pytest.raises(UnknownModelError, match="no model named 'nope'"):
            change()
    assert snapshot(registry.engine) == before


def test_the_database_holds_one_active_model(registry: ModelRegistry,
                                             checkpoints: list[Path]) -> None:
    """Not a convention of the code: a second active row is refused by the index."""
    import_checkpoint(registry, checkpoints[0], name="m0", actor="a", activate=True)
    import_checkpoint(registry, checkpoints[1], name="m1", actor="a")
    with pytest.raises(IntegrityError), registry.engine.begin() as conn:
        conn.execute(update(Model).where(Model.name == "m1").values(state=ModelState.ACTIVE))
    with pytest.raises(IntegrityError), registry.engine.begin() as conn:
        row = dict(conn.execute(select(Model.__table__).where(Model.name == "m1")).mappings()
                   .one())
        del row["id"]
        conn.execute(insert(Model).values({**row, "name": "m9", "file_sha256": "0" * 64,
                                           "state": ModelState.ACTIVE}))
    assert states(registry) == {"m0": "active", "m1": "candidate"}


def corrupt(tmp: Path, source: Path) -> Path:
    path = tmp / "truncated.pt"
    path.write_bytes(source.read_bytes()[:5000])
    return path


def card_of_another_architecture(tmp: Path, source: Path) -> Path:
    """ichnet weights under a card that says vanilla, with a correct sha256: the card does
    not match the weights' architecture."""
    payload = torch.load(source, weights_only=True)
    card = dict(payload["card"], architecture="vanilla")
    card["sha256"] = weights_sha256(payload["state_dict"])
    path = tmp / "mislabelled.pt"
    torch.save({**payload, "card": card}, path)
    return path


def side_card_differs(tmp: Path, source: Path) -> Path:
    path = tmp / "edited.pt"
    path.write_bytes(source.read_bytes())
    card = json.loads(card_path(source).read_text())
    card["thresholds"]["any"] = 0.01
    card_path(path).write_text(json.dumps(card))
    return path


def altered_weights(tmp: Path, source: Path) -> Path:
    payload = torch.load(source, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1
    path = tmp / "altered.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp, src: tmp / "missing.pt", "checkpoint not found"),
    (corrupt, "cannot read checkpoint"),
    (card_of_another_architecture, "do not fit vanilla"),
    (side_card_differs, r"differs from the one inside it \(thresholds\)"),
    (altered_weights, "do not match the card's sha256"),
], ids=["missing", "corrupt", "card-not-its-architecture", "side-card-differs", "altered"])
def test_bad_checkpoints_are_refused_with_the_registry_unchanged(
        registry: ModelRegistry, checkpoints: list[Path], tmp_path: Path, make: Any,
        message: str) -> None:
    import_checkpoint(registry, checkpoints[0], name="m0", actor="a", activate=True)
    before = snapshot(registry.engine)
    files = sorted(registry.root.iterdir())
    with pytest.raises(ModelError, match=message):
        import_checkpoint(registry, make(tmp_path, checkpoints[1]), name="bad", actor="a")
    assert snapshot(registry.engine) == before
    assert sorted(registry.root.iterdir()) == files


def test_the_same_file_or_name_twice_is_refused(registry: ModelRegistry,
                                                checkpoints: list[Path]) -> None:
    import_checkpoint(registry, checkpoints[0], name="m0", actor="a")
    before = snapshot(registry.engine)
    with pytest.raises(DuplicateModelError, match="registered already, as 'm0'"):
        import_checkpoint(registry, checkpoints[0], name="again", actor="a")
    with pytest.raises(DuplicateModelError, match="named 'm0' is registered already"):
        import_checkpoint(registry, checkpoints[1], name="m0", actor="a")
    assert snapshot(registry.engine) == before
    with pytest.raises(ValueError, match="name: 'no spaces please'"):
        import_checkpoint(registry, checkpoints[1], name="no spaces please", actor="a")


def test_first_start_registers_the_demo_and_model_setting_seeds_the_registry(
        registry: ModelRegistry, checkpoints: list[Path]) -> None:
    demo = ensure_active_model(registry, "")
    assert (demo.name, demo.state) == (DEMO_NAME, ModelState.ACTIVE)
    assert ensure_active_model(registry, "").pk == demo.pk  # registered once
    seeded = ensure_active_model(registry, str(checkpoints[0]))  # a new file: imported, active
    assert seeded.state is ModelState.ACTIVE and seeded.source_path == str(checkpoints[0])
    registry.promote(DEMO_NAME, actor="admin", reason="back to the demo")
    # the file is registered already: a restart with the same --model undoes nothing
    assert ensure_active_model(registry, str(checkpoints[0])).name == DEMO_NAME
    registry.promote(seeded.name, actor="admin")
    registry.retire(DEMO_NAME, actor="admin")
    # a start without --model: the registry is not empty, the demo is not imported again
    assert ensure_active_model(registry, "").name == seeded.name
    assert sorted(states(registry).items()) == sorted(
        {DEMO_NAME: "retired", seeded.name: "active"}.items())
    with pytest.raises(ModelUnavailableError, match="no such file"):
        ensure_active_model(registry, str(checkpoints[0].with_name("gone.pt")))


def test_processes_starting_together_each_copy_the_model_in_safely(
        registry: ModelRegistry, checkpoints: list[Path]) -> None:
    """The workers of a node started at once all copy the shipped model into an empty
    registry: every copy ends in the one content-addressed file, none fails (a shared
    temporary name once let one worker move another's copy away: ENOENT at its rename)."""
    import threading

    source = checkpoints[0]
    sha = file_sha256(source)
    barrier = threading.Barrier(8)
    results: list[Path | BaseException] = []

    def copy_in() -> None:
        barrier.wait()
        try:
            for _ in range(5):
                results.append(registry._copy_in(source, sha))
        except BaseException as exc:  # any failure is the finding
            results.append(exc)

    threads = [threading.Thread(target=copy_in) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = registry.root.resolve() / f"{sha}.pt"
    assert results == [target] * 40
    assert file_sha256(target) == sha
    assert sorted(p.name for p in registry.root.iterdir()) == [target.name]  # no temporary left


def test_no_active_model_is_a_clear_error(registry: ModelRegistry,
                                          checkpoints: list[Path]) -> None:
    import_checkpoint(registry, checkpoints[0], name="m0", actor="a")
    with pytest.raises(ModelUnavailableError, match="no model is active"):
        ensure_active_model(registry, "")
    with pytest.raises(ModelUnavailableError, match="no model is active"):
        ModelHolder(registry, device="cpu").get()


def test_the_holder_follows_the_registry_and_checks_the_file(
        registry: ModelRegistry, checkpoints: list[Path]) -> None:
    first = import_checkpoint(registry, checkpoints[0], name="m0", actor="a", activate=True)
    import_checkpoint(registry, checkpoints[1], name="m1", actor="a")
    holder = ModelHolder(registry, device="cpu")
    loaded = holder.get()
    assert loaded.entry.name == "m0" and loaded.classifier.card.sha256 == first.weights_sha256
    assert holder.get() is loaded  # nothing changed: not loaded again
    registry.promote("m1", actor="a")
    assert holder.get().entry.name == "m1"  # picked up, no restart
    registry.rollback(actor="a")
    again = holder.get()
    assert again.entry.name == "m0" and again is not loaded
    first.file_path.write_bytes(checkpoints[2].read_bytes())  # swapped behind the registry
    registry.promote("m1", actor="a")
    assert holder.get().entry.name == "m1"
    registry.rollback(actor="a")
    with pytest.raises(ModelUnavailableError, match="is not the one registered"):
        holder.get()


def test_promotions_racing_each_other_leave_one_active_model(
        registry: ModelRegistry, checkpoints: list[Path]) -> None:
    """Threads promoting different models at once: each promotion wins whole or fails with a
    RegistryError; never two active, never none."""
    import threading

    from storage.registry import RegistryError

    for i, path in enumerate(checkpoints):
        import_checkpoint(registry, path, name=f"m{i}", actor="a", activate=(i == 0))
    barrier = threading.Barrier(3)
    outcomes: list[str] = []

    def promote(name: str) -> None:
        for _ in range(5):
            barrier.wait()
            try:
                registry.promote(name, actor=name)
                outcomes.append("won")
            except ModelStateError:
                outcomes.append("already")  # the other thread's promotion of it came first
            except RegistryError:
                outcomes.append("lost")

    threads = [threading.Thread(target=promote, args=(f"m{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 15 and "won" in outcomes
    with registry.engine.connect() as conn:
        active = conn.execute(select(func.count()).select_from(Model)
                              .where(Model.state == ModelState.ACTIVE)).scalar_one()
    assert active == 1
    wins = [d for d in registry.history() if d.action == "promote" and d.actor != "a"]
    assert len(wins) == outcomes.count("won")  # a lost promotion left no decision behind
