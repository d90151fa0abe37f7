"""The recipe's pure parts: progressive resizing's epoch plan, `--sizes` parsing, the lineage round trip."""

from __future__ import annotations

import pytest

from learner.training.recipe import TrainConfig, epoch_input_sizes, parse_sizes


def test_epochs_split_evenly_across_sizes_smallest_first() -> None:
    assert epoch_input_sizes((160, 224), 12, 224) == [160] * 6 + [224] * 6
    assert epoch_input_sizes((128, 160, 224), 6, 224) == [128, 128, 160, 160, 224, 224]


def test_epochs_that_do_not_divide_evenly_go_to_the_larger_sizes() -> None:
    assert epoch_input_sizes((160, 224), 15, 224) == [160] * 7 + [224] * 8
    assert epoch_input_sizes((128, 160, 224), 7, 224) == [128, 128, 160, 160, 224, 224, 224]
    assert epoch_input_sizes((128, 160, 224), 8, 224) == [128, 128, 160, 160, 160, 224, 224, 224]


def test_no_sizes_trains_every_epoch_at_the_input_size() -> None:
    assert epoch_input_sizes((), 4, 224) == [224] * 4
    assert TrainConfig(epochs=3).epoch_input_sizes(240) == [240] * 3


@pytest.mark.parametrize(
    ("sizes", "epochs", "message"),
    [
        ((160, 192), 4, "last training size must be the model's input size 224"),
        ((256, 224), 4, "between 1 and the input size 224"),
        ((0, 224), 4, "between 1 and the input size 224"),
        ((128, 160, 224), 2, "3 training sizes need at least as many epochs"),
    ],
)
def test_a_plan_that_cannot_end_at_the_input_size_is_refused(sizes: tuple[int, ...], epochs: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        epoch_input_sizes(sizes, epochs, 224)


def test_sizes_parse_from_the_command_line_form() -> None:
    assert parse_sizes("160,224") == (160, 224)
    assert parse_sizes(" 128, 224 ") == (128, 224)
    for bad in ("", "160;224", "big"):
        with pytest.raises(ValueError, match="--sizes takes comma-separated input sides"):
            parse_sizes(bad)


def test_sizes_survive_the_lineage_round_trip() -> None:
    config = TrainConfig(sizes=(160, 224))
    as_json_would_give = {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}

    assert as_json_would_give["sizes"] == [160, 224]
    assert TrainConfig.from_dict(as_json_would_give).sizes == (160, 224)


def test_a_lineage_written_before_one_pass_serving_epochs_reads_back_as_keeping_the_steps() -> None:
    old = TrainConfig().to_dict()
    del old["serving_only_keep_steps"]

    assert TrainConfig.from_dict(old).serving_only_keep_steps is True
    assert TrainConfig.from_dict(TrainConfig().to_dict()).serving_only_keep_steps is False
    assert TrainConfig.from_dict(TrainConfig(serving_only_keep_steps=True).to_dict()).serving_only_keep_steps is True


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_a_low_resolution_title_weight_outside_zero_to_one_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="--low-res-title-weight"):
        TrainConfig(epochs=4, low_res_title_weight=weight).low_res_epochs()


def test_a_lineage_written_before_lighter_low_resolution_titles_reads_back_as_weighing_them_fully() -> None:
    old = TrainConfig().to_dict()
    del old["low_res_title_weight"]

    assert TrainConfig.from_dict(old).low_res_title_weight == 1.0
    assert TrainConfig.from_dict(TrainConfig().to_dict()).low_res_title_weight == TrainConfig().low_res_title_weight
