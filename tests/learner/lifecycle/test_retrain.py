"""Retraining end to end (learner/lifecycle/) on a real SQLite product database, the CC0 photos and a real registry:
a challenger that learned is promoted, one trained on shuffled labels is rejected and the champion stays, rollback
restores the previous champion, and the data rules (holdout never trained on, human values only, dedup, replay).

Small on purpose: ~150 CC0 photos at 64 px, EfficientNet-Lite0 with the backbone stages frozen, 3 epochs, one
thread. The first champion has untrained heads, so a fine-tuned challenger beats it clearly on the holdout.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from connectors.db import ProductStore, RetrainingStore
from connectors.images import ImageFetcher
from connectors.records import AttributeValue, ProductResult
from learner.datasets.labelled import load_labelled_set
from learner.evaluation.gate import GateConfig
from learner.lifecycle.corrections import assemble_training_data
from learner.lifecycle.errors import RetrainError
from learner.lifecycle.holdout import HoldoutRule, pin_holdout_rule
from learner.lifecycle.registry import ModelRegistry, read_alias_state, resolve_alias
from learner.lifecycle.retrain import RetrainConfig, run_retraining
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.classifier import AttributeClassifier
from learner.model.taxonomy import load_taxonomy
from learner.training.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[3]
TAXONOMY = ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml"
HOLDOUT = HoldoutRule(salt="test-holdout", fraction=0.3)


@dataclasses.dataclass
class World:
    config: RetrainConfig
    store: ProductStore
    learner: RetrainingStore
    fetcher: ImageFetcher
    registry: ModelRegistry
    rows: list[dict[str, str]]  # the CC0 labels.csv rows used (image = product id)
    images: Path
    first_champion: str


def _recipe() -> TrainConfig:
    return TrainConfig(
        epochs=3,
        batch_size=16,
        lr=3e-3,
        warmup_epochs=0.3,
        freeze_stages=9,  # every EfficientNet-Lite0 stage: only the heads (and the last batch-norm) learn
        ema_decay=0.0,
        patience=0,
        device="cpu",
        threads=1,
        progress=False,
    )


def _write_base_set(directory: Path, rows: list[dict[str, str]], images: Path) -> Path:
    directory.mkdir(parents=True)
    with (directory / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "product_id", "label", "kids"])
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "image": str(images / f"{r['image']}.jpg"),
                    "product_id": r["image"],
                    "label": r["label"],
                    "kids": r["kids"],
                }
            )
    return directory


def _processed(store: ProductStore, rows: list[dict[str, str]], images: Path) -> None:
    """What the daemon leaves behind: each product processed once by the model (with its image URL)."""
    results = []
    for r in rows:
        path = images / f"{r['image']}.jpg"
        results.append(
            ProductResult(
                product_id=r["image"],
                title=None,
                category_hint=None,
                event_id=None,
                image_url=path.as_uri(),
                image_digest=hashlib.sha256(path.read_bytes()).hexdigest(),
                model_version="cc0-untrained-test",
                attributes=[AttributeValue("garment", "Hat", 0.2)],  # the model's guess: never a training label
                source="test",
            )
        )
    store.write_results(results)


def _correct(store: ProductStore, rows: list[dict[str, str]], images: Path, labels: list[str] | None = None) -> None:
    for i, r in enumerate(rows):
        digest = hashlib.sha256((images / f"{r['image']}.jpg").read_bytes()).hexdigest()
        label = labels[i] if labels is not None else r["label"]
        store.set_human_value(r["image"], "garment", label, annotator="ann", image_digest=digest)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, cc0_dir: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("retrain")
    images = cc0_dir / "images"
    with (cc0_dir / "labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if (images / f"{r['image']}.jpg").is_file()]
    rows = rows[::5] + rows[1::5] + rows[2::5]  # ~150 photos spread over every garment
    base = _write_base_set(tmp / "base", rows[:100], images)

    taxonomy = load_taxonomy(TAXONOMY)
    torch.manual_seed(0)
    model = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=True)
    model.preprocessing = dataclasses.replace(model.preprocessing, input_size=64)
    registry = ModelRegistry(tmp / "registry")
    path = ModelBundle("cc0-untrained-champion", taxonomy, model).save(tmp / "untrained.safetensors")
    registry.promote(registry.register(path).version, reason="first champion")

    store = ProductStore(f"sqlite:///{tmp / 'shelfsight.db'}")
    store.migrate()
    _processed(store, rows, images)
    config = RetrainConfig(
        registry=registry.root,
        work_dir=tmp / "work",
        base_data=base,
        base_group_column="product_id",
        holdout=HOLDOUT,
        val_fraction=0.2,
        min_corrections=5,
        replay_ratio=4.0,
        replay_min_samples=1000,
        recipe=_recipe(),
        gate=GateConfig(bootstrap_samples=1000, max_group_regression=0.05),
    )
    fetcher = ImageFetcher(file_root=images)
    yield World(config, store, RetrainingStore(store), fetcher, registry, rows, images, "cc0-untrained-champion")
    fetcher.close()
    store.close()


def _outside_holdout(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if not HOLDOUT.contains(r["image"])]


def test_training_data_keeps_the_holdout_out_and_uses_only_human_values(world: World) -> None:
    corrected = _outside_holdout(world.rows[100:])[:10]
    in_holdout = [r for r in world.rows[100:] if HOLDOUT.contains(r["image"])][:3]
    _correct(world.store, corrected + in_holdout, world.images)
    corrections = world.learner.human_corrections()
    champion = load_bundle(resolve_alias(world.registry.root))
    data = assemble_training_data(world.config, champion.taxonomy, corrections, None, world.fetcher)

    trained = {s.split_key for s in data.train + data.val}
    held = {s.split_key for s in data.holdout}
    assert held and trained and not trained & held
    assert all(HOLDOUT.contains(p) for p in held)
    assert {r["image"] for r in in_holdout} <= held  # audited products in the holdout's buckets join it
    # a correction-only product is labelled for the corrected group only; the model's values are not labels
    by_product = {s.split_key: s for s in data.train + data.val + data.holdout}
    for r in corrected:
        sample = by_product[r["image"]]
        assert sample.labels["kids"] is None
        assert sample.labels["garment"] is not None
    # one sample per image: base images are not duplicated by corrections of the same photo
    assert len({s.image_path.name for s in data.train + data.val + data.holdout}) == len(by_product)
    assert data.snapshot["corrections"]["images"] == len(corrected) + len(in_holdout)
    assert data.snapshot["holdout"]["rule"] == HOLDOUT.describe()


def test_a_capped_holdout_gives_products_to_training_and_a_later_run_never_takes_them_back(world: World) -> None:
    champion = load_bundle(resolve_alias(world.registry.root))
    corrections = world.learner.human_corrections()
    capped = dataclasses.replace(world.config, holdout=dataclasses.replace(HOLDOUT, max_products=10))
    data = assemble_training_data(capped, champion.taxonomy, corrections, None, world.fetcher)
    held = {s.split_key for s in data.holdout}
    trained = {s.split_key for s in data.train + data.val}
    assert len(held) == data.effective_holdout.products == 10 and not held & trained
    assert data.snapshot["holdout"]["threshold"] == data.effective_holdout.threshold < HOLDOUT.fraction
    # the cap raised later: the recorded threshold is the ceiling, so the holdout stays what it was
    wider = dataclasses.replace(world.config, holdout=dataclasses.replace(HOLDOUT, max_products=40))
    ceiling = data.effective_holdout.threshold
    again = assemble_training_data(wider, champion.taxonomy, corrections, None, world.fetcher, ceiling)
    assert {s.split_key for s in again.holdout} == held


def test_a_challenger_that_learned_is_promoted(world: World) -> None:
    outcome = run_retraining(world.config, world.learner, world.fetcher, reason="manual")
    assert outcome.status == "promoted", outcome.message
    state = read_alias_state(world.registry.root)
    assert state.aliases == {"champion": outcome.challenger, "previous": world.first_champion}
    bundle = load_bundle(resolve_alias(world.registry.root))
    assert bundle.lineage["parent"] == world.first_champion
    assert bundle.metrics["holdout"]["summary"]["mean_top1"] > 0
    assert bundle.thresholds["garment"]  # per-class thresholds from validation travel in the bundle
    assert outcome.decision is not None and outcome.decision["bootstrap"]["low"] > 0
    assert outcome.decision["champion_holdout"]["groups"]["garment"]["ece"] is not None
    record = world.registry.get(outcome.challenger or "")
    assert record.data["status"] == "promoted" and record.data["gate"]["outcome"] == "promoted"
    run = world.learner.last_completed_run()
    assert run is not None and run.status == "promoted" and run.challenger_version == outcome.challenger


def test_a_run_records_its_holdout_threshold_in_the_registry_and_its_holdout_with_the_decision(world: World) -> None:
    quick = dataclasses.replace(world.config)
    quick.recipe = dataclasses.replace(_recipe(), epochs=1)
    outcome = run_retraining(quick, world.learner, world.fetcher, reason="manual", force=True)
    assert outcome.decision is not None, outcome.message
    holdout = outcome.decision["holdout"]
    assert holdout["images"] == outcome.decision["holdout_images"] and holdout["products"] > 0
    assert holdout["products"] < holdout["labelled_products"]
    recorded = json.loads((world.registry.root / "holdout.json").read_text())
    assert recorded["runs"][-1]["run_id"] == outcome.run_id
    assert recorded["runs"][-1]["threshold"] == recorded["threshold"] == holdout["threshold"]


def test_nothing_new_means_a_skipped_run(world: World) -> None:
    outcome = run_retraining(world.config, world.learner, world.fetcher, reason="corrections")
    assert outcome.status == "skipped"
    assert "0 new correction" in outcome.message


def test_a_challenger_trained_on_shuffled_labels_is_rejected_and_the_champion_stays(world: World) -> None:
    champion_before = read_alias_state(world.registry.root)
    victims = _outside_holdout(world.rows[:100])[:60]
    labels = [r["label"] for r in victims]
    random.Random(1).shuffle(labels)
    _correct(world.store, victims, world.images, labels)
    worse = dataclasses.replace(world.config, replay_ratio=0.0, replay_min_samples=0)
    worse.recipe = dataclasses.replace(_recipe(), epochs=4, lr=1e-2)
    outcome = run_retraining(worse, world.learner, world.fetcher, reason="corrections")
    assert outcome.status == "rejected", outcome.message
    assert outcome.decision is not None and outcome.decision["bootstrap"]["difference"] < 0
    assert read_alias_state(world.registry.root).aliases == champion_before.aliases
    assert world.registry.get(outcome.challenger or "").data["status"] == "rejected"
    assert any(d["outcome"] == "rejected" for d in world.registry.decisions())


def test_rollback_restores_the_previous_champion(world: World) -> None:
    state = world.registry.rollback(reason="test")
    assert state.aliases == {"champion": world.first_champion}
    assert load_bundle(resolve_alias(world.registry.root)).model_version == world.first_champion


def test_a_second_run_while_one_holds_the_lock_does_nothing(world: World) -> None:
    from connectors.db import DatabaseLock
    from learner.lifecycle.retrain import RUN_LOCK

    with DatabaseLock(world.store, RUN_LOCK):
        outcome = run_retraining(world.config, world.learner, world.fetcher, force=True)
    assert outcome.status == "locked"


def test_changing_the_pinned_holdout_rule_is_refused(tmp_path: Path) -> None:
    pin_holdout_rule(tmp_path, HOLDOUT)
    pin_holdout_rule(tmp_path, HOLDOUT)
    with pytest.raises(RetrainError, match="pinned"):
        pin_holdout_rule(tmp_path, HoldoutRule(salt="test-holdout", fraction=0.4))


def test_detection_map_rewards_boxes_that_match_the_annotators_objects() -> None:
    from learner.evaluation.detection import detection_map

    truth = [[("person", [10.0, 10.0, 50.0, 90.0])], [("handbag", [0.0, 0.0, 20.0, 20.0])]]
    perfect = [[("person", 0.9, [10.0, 10.0, 50.0, 90.0])], [("handbag", 0.8, [0.0, 0.0, 20.0, 20.0])]]
    assert detection_map(perfect, truth)["map"] == pytest.approx(1.0)
    shifted = [[("person", 0.9, [14.0, 14.0, 54.0, 94.0])], [("handbag", 0.8, [3.0, 3.0, 23.0, 23.0])]]
    partly = detection_map(shifted, truth)
    assert 0.0 < partly["map"] < partly["map_50"] == pytest.approx(1.0)
    wrong_class = [[("handbag", 0.9, [10.0, 10.0, 50.0, 90.0])], []]
    assert detection_map(wrong_class, truth)["map"] == pytest.approx(0.0)
    assert partly["images"] == 2 and partly["objects"] == 2


def test_holdout_evaluation_measures_the_detector_on_boxed_holdout_images(
    world: World, untrained_bundle_path: Path
) -> None:
    from learner.lifecycle.corrections import holdout_boxes
    from learner.lifecycle.holdout import evaluate_on_holdout
    from learner.model.detector import DetectorSpec, build_detector

    rows = [r for r in world.rows if HOLDOUT.contains(r["image"])][:2]
    for r in rows:
        path = world.images / f"{r['image']}.jpg"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        world.store.set_human_value(
            r["image"], "detectedObjects", ["person"], annotator="ann", box=[5, 5, 60, 120], image_digest=digest
        )
    bundle = load_bundle(untrained_bundle_path)
    spec = DetectorSpec(
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        ["__background__", "person", "handbag"],
        weights="bundle",
        score_threshold=0.0,
        max_detections=5,
    )
    torch.manual_seed(0)
    bundle.detector, bundle.detector_spec = build_detector(spec).eval(), spec
    boxes = holdout_boxes(
        world.learner.human_corrections(), bundle.taxonomy, HOLDOUT, world.fetcher, world.config.work_dir / "images"
    )
    assert sorted(len(v) for v in boxes.values()) == [1, 1]
    assert all(objects == [("person", [5.0, 5.0, 60.0, 120.0], None)] for objects in boxes.values())  # no mask drawn
    samples = load_labelled_set(world.config.base_data, bundle.taxonomy, group_column="product_id").samples[:4]
    evaluation = evaluate_on_holdout(bundle, samples, "cpu", 8, boxes)
    assert evaluation.detection is not None
    assert evaluation.detection["images"] == 2 and evaluation.detection["objects"] == 2
    assert 0.0 <= evaluation.detection["map"] <= 1.0 and 0.0 <= evaluation.detection["iou_sweep"] <= 1.0
    assert evaluation.summary()["detection"] == evaluation.detection


def test_a_run_with_two_torchrun_processes_trains_registers_and_decides(world: World) -> None:
    two = dataclasses.replace(world.config, nproc_per_node=2)
    two.recipe = dataclasses.replace(_recipe(), epochs=1)
    outcome = run_retraining(two, world.learner, world.fetcher, reason="manual", force=True)
    assert outcome.status in ("promoted", "rejected"), outcome.message
    challenger = load_bundle(world.registry.resolve(outcome.challenger or ""))
    assert challenger.lineage["world_size"] == 2
    assert challenger.lineage["parent"] == outcome.champion
    assert not (world.config.work_dir / "runs" / str(outcome.run_id)).exists()  # scratch removed after the run


def test_a_challenger_is_not_promoted_over_a_champion_changed_during_the_run(world: World) -> None:
    if read_alias_state(world.registry.root).aliases.get("champion") != world.first_champion:
        world.registry.promote(world.first_champion)  # an untrained champion: a fine-tuned challenger beats it
    other = next(r.version for r in world.registry.versions() if r.version != world.first_champion)

    def promote_meanwhile(phase: str) -> None:
        if phase == "evaluate":
            world.registry.promote(other, reason="manual promotion during the run")

    # the data now holds the shuffled corrections of an earlier test: judge on the primary metric alone
    config = dataclasses.replace(world.config, gate=GateConfig(bootstrap_samples=1000, max_group_regression=1.0))
    outcome = run_retraining(config, world.learner, world.fetcher, force=True, on_phase=promote_meanwhile)
    assert outcome.status == "rejected", outcome.message
    assert "the champion changed during the run" in outcome.message
    assert read_alias_state(world.registry.root).aliases["champion"] == other


def test_a_run_that_lost_its_lock_registers_and_promotes_nothing(world: World) -> None:
    before = read_alias_state(world.registry.root)
    versions = len(world.registry.versions())

    def lose_the_lease(phase: str) -> None:
        if phase == "evaluate":  # what an expired and taken-over lease looks like on SQLite
            with world.store.engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM learner_locks"))

    outcome = run_retraining(world.config, world.learner, world.fetcher, force=True, on_phase=lose_the_lease)
    assert outcome.status == "failed" and "lock was lost" in outcome.message
    assert read_alias_state(world.registry.root) == before
    assert len(world.registry.versions()) == versions


# --- the detector: fine-tuned on annotators' boxes when there are any ------------------------------------


@dataclasses.dataclass
class SceneWorld:
    config: RetrainConfig
    store: ProductStore
    learner: RetrainingStore
    fetcher: ImageFetcher
    registry: ModelRegistry
    scenes: dict[Path, list[tuple[str, list[float]]]]  # product image (product id = file stem) -> its objects


@pytest.fixture
def scene_world(tmp_path: Path) -> Iterator[SceneWorld]:
    """A champion with a small random detector (tests/learner/scenes.py) and an untrained classifier, and 30
    synthetic products the daemon processed and annotators labelled (garment: where the person stands)."""
    from learner.training.detector import DetectorRecipe
    from tests.learner.scenes import draw_scenes, small_detector

    scenes = draw_scenes(tmp_path / "images", 30, seed=7)
    taxonomy = load_taxonomy(TAXONOMY)
    torch.manual_seed(0)
    classifier = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=True)
    classifier.preprocessing = dataclasses.replace(classifier.preprocessing, input_size=64)
    detector, spec = small_detector(seed=0)
    registry = ModelRegistry(tmp_path / "registry")
    champion = ModelBundle("scene-champion", taxonomy, classifier, detector=detector, detector_spec=spec)
    registry.promote(registry.register(champion.save(tmp_path / "champion.safetensors")).version)

    store = ProductStore(f"sqlite:///{tmp_path / 'shelfsight.db'}")
    store.migrate()
    results = []
    for path in scenes:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        results.append(
            ProductResult(path.stem, None, None, None, path.as_uri(), digest, "scene-champion", [], source="test")
        )
    store.write_results(results)
    for path, objects in scenes.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        person_left = objects[0][1][0] < 64
        store.set_human_value(path.stem, "garment", "Dress" if person_left else "Hat", "ann", image_digest=digest)
    config = RetrainConfig(
        registry=registry.root,
        work_dir=tmp_path / "work",
        holdout=HOLDOUT,
        val_fraction=0.2,
        min_corrections=1,
        recipe=dataclasses.replace(_recipe(), epochs=1),
        detector=DetectorRecipe(epochs=1, lr=1e-3, device="cpu", threads=1, progress=False),
        gate=GateConfig(bootstrap_samples=200, max_group_regression=1.0, max_detection_regression=1.0),
    )
    fetcher = ImageFetcher(file_root=tmp_path / "images")
    yield SceneWorld(config, store, RetrainingStore(store), fetcher, registry, scenes)
    fetcher.close()
    store.close()


def _box_the_people(world: SceneWorld) -> int:
    """Annotators box the person in every scene (one box per product and detector group); returns how many
    of them are outside the holdout."""
    for path, objects in world.scenes.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        box = objects[0][1]
        world.store.set_human_value(path.stem, "detectedObjects", ["person"], "ann", box=box, image_digest=digest)
    return sum(1 for p in world.scenes if not HOLDOUT.contains(p.stem))


def _detector_state(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    assert bundle.detector is not None
    return bundle.detector.state_dict()


def test_boxed_corrections_give_the_challenger_a_fine_tuned_detector(scene_world: SceneWorld) -> None:
    trained_on = _box_the_people(scene_world)
    assert 0 < trained_on < len(scene_world.scenes)

    outcome = run_retraining(scene_world.config, scene_world.learner, scene_world.fetcher, force=True)

    assert outcome.status in ("promoted", "rejected"), outcome.message
    champion = load_bundle(scene_world.registry.resolve(outcome.champion or ""))
    challenger = load_bundle(scene_world.registry.resolve(outcome.challenger or ""))
    assert challenger.detector_spec is not None and challenger.detector_spec.weights == "bundle"
    before, after = _detector_state(champion), _detector_state(challenger)
    assert before.keys() == after.keys()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
    assert outcome.decision is not None
    training = outcome.decision["detector_training"]
    assert training["fine_tuned"] and training["images"] == trained_on and training["objects"] == trained_on
    assert challenger.lineage["detector"]["images"] == trained_on
    # holdout boxes exist, so the gate compared both detectors' mAP
    assert outcome.decision["detection"] is not None
    assert outcome.decision["challenger_holdout"]["detection"]["objects"] == len(scene_world.scenes) - trained_on


def test_without_boxed_corrections_the_challenger_keeps_the_champions_detector(scene_world: SceneWorld) -> None:
    outcome = run_retraining(scene_world.config, scene_world.learner, scene_world.fetcher, force=True)

    assert outcome.status in ("promoted", "rejected"), outcome.message
    champion = load_bundle(scene_world.registry.resolve(outcome.champion or ""))
    challenger = load_bundle(scene_world.registry.resolve(outcome.challenger or ""))
    before, after = _detector_state(champion), _detector_state(challenger)
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
    assert outcome.decision is not None
    assert outcome.decision["detector_training"]["fine_tuned"] is False
    assert "no boxed objects" in outcome.decision["detector_training"]["reason"]
    assert outcome.decision["detection"] is None  # no holdout boxes: nothing for the detection rule to compare
