"""The model registry (learner/lifecycle/registry.py): versions, the champion/previous aliases, promote and rollback,
atomic alias updates and what a crash leaves behind."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from learner.lifecycle.registry import (
    ModelRegistry,
    RegistryError,
    generation,
    read_alias_state,
    resolve_alias,
)
from learner.model.bundle import FORMAT, FORMAT_VERSION, MANIFEST_KEY, load_bundle


def _fake_bundle(directory: Path, version: str, parent: str | None = None) -> Path:
    """A safetensors file with a ShelfSight manifest: enough for the registry, which never loads weights."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version": version,
        "taxonomy": {"name": "clothing-cc0"},
        "classifier": {"backbone": "tf_efficientnet_lite0"},
        "metrics": {"validation": {"summary": {"mean_top1": 0.5}}},
        "lineage": {"parent": parent, "data": {"samples": 10}},
    }
    path = directory / f"{version}.safetensors"
    save_file({"classifier.w": torch.zeros(2)}, str(path), metadata={MANIFEST_KEY: json.dumps(manifest)})
    return path


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_registered_version_keeps_its_parent_data_and_metrics(registry: ModelRegistry, tmp_path: Path) -> None:
    record = registry.register(_fake_bundle(tmp_path, "v2", parent="v1"), holdout={"mean_top1": 0.7}, run_id=3)
    assert record.parent == "v1"
    assert record.data["data"] == {"samples": 10}
    assert record.data["metrics"]["validation"]["summary"]["mean_top1"] == 0.5
    assert record.data["holdout"] == {"mean_top1": 0.7} and record.data["run_id"] == 3
    assert (registry.root / "versions" / "v2.safetensors").is_file()
    assert [r.version for r in registry.versions()] == ["v2"]


def test_registering_the_same_version_twice_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path, "v1")
    registry.register(bundle)
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(bundle)


def test_promote_moves_champion_to_previous_and_bumps_the_generation(registry: ModelRegistry, tmp_path: Path) -> None:
    for v in ("v1", "v2"):
        registry.register(_fake_bundle(tmp_path, v))
    assert generation(registry.root) == 0
    registry.promote("v1", reason="first")
    registry.promote("v2", reason="won the gate")
    state = read_alias_state(registry.root)
    assert state.aliases == {"champion": "v2", "previous": "v1"}
    assert state.generation == 2
    assert resolve_alias(registry.root, "champion") == registry.root / "versions" / "v2.safetensors"
    assert [(e["action"], e["reason"]) for e in registry.events()] == [
        ("promote", "first"),
        ("promote", "won the gate"),
    ]


def test_rollback_restores_the_previous_champion(registry: ModelRegistry, tmp_path: Path) -> None:
    for v in ("v1", "v2", "v3"):
        registry.register(_fake_bundle(tmp_path, v))
        registry.promote(v)
    state = registry.rollback(reason="bad reviews")
    assert state.aliases == {"champion": "v2", "previous": "v1"}
    assert resolve_alias(registry.root, "champion").name == "v2.safetensors"
    assert registry.events()[-1]["rolled_back"] == "v3"
    state = registry.rollback()
    assert state.aliases == {"champion": "v1"}
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    assert generation(registry.root) == 5


def test_promoting_an_unregistered_version_is_refused(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="not registered"):
        registry.promote("nope")
    with pytest.raises(RegistryError, match="no 'champion'"):
        resolve_alias(registry.root, "champion")


def test_remove_orphans_deletes_unregistered_bundles_but_never_registered_ones(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.register(_fake_bundle(tmp_path, "v1"))
    versions = registry.root / "versions"
    # what a crash between writing a challenger and registering it leaves behind
    (versions / "v2.safetensors").write_bytes(b"half a bundle")
    (versions / "v3.safetensors.tmp").write_bytes(b"")
    removed = registry.remove_orphans()
    assert sorted(p.name for p in removed) == ["v2.safetensors", "v3.safetensors.tmp"]
    assert sorted(p.name for p in versions.iterdir()) == ["v1.json", "v1.safetensors"]


def test_decisions_are_recorded_in_their_own_files_and_in_the_version_record(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.register(_fake_bundle(tmp_path, "v1"))
    path = registry.record_decision("v1", {"outcome": "rejected", "reasons": ["no significant win"]})
    assert json.loads(path.read_text())["outcome"] == "rejected"
    assert registry.get("v1").data["gate"]["reasons"] == ["no significant win"]
    assert [d["version"] for d in registry.decisions()] == ["v1"]


def _promote_many(root: str, versions: list[str]) -> None:
    registry = ModelRegistry(root)
    for v in versions:
        registry.promote(v)


def test_concurrent_promotions_from_two_processes_lose_no_update(registry: ModelRegistry, tmp_path: Path) -> None:
    names = [f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)]
    for v in names:
        registry.register(_fake_bundle(tmp_path, v))
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_promote_many, args=(str(registry.root), [v for v in names if v[0] == p])) for p in "ab"
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = read_alias_state(registry.root)
    assert state.generation == 30
    assert sorted(state.history) == sorted(names)


def test_champion_resolves_to_a_loadable_bundle(registry: ModelRegistry, untrained_bundle_path: Path) -> None:
    record = registry.register(untrained_bundle_path)
    registry.promote(record.version)
    assert load_bundle(resolve_alias(registry.root)).model_version == record.version
