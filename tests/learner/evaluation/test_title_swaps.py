import numpy as np

from learner.evaluation.title_swaps import names_value, overlapping, swap_value_word

COLOURS = ["Black", "Blue", "Navy Blue", "Red", "White", "Off White"]


def test_a_title_naming_its_colour_gets_another_colour_in_its_place() -> None:
    rng = np.random.default_rng(0)
    swapped = swap_value_word("Puma Men Black Running Shoes", "Black", COLOURS, rng)
    assert swapped is not None
    title, value = swapped
    assert value != "Black"
    assert title == f"Puma Men {value} Running Shoes"


def test_a_title_that_does_not_name_its_value_is_not_swapped() -> None:
    rng = np.random.default_rng(0)
    assert swap_value_word("Puma Men Running Shoes", "Black", COLOURS, rng) is None
    # a word inside another word is not a mention
    assert swap_value_word("Menthol Fresh Deo", "Men", ["Men", "Women"], rng) is None


def test_values_that_contain_the_labelled_one_are_never_drawn() -> None:
    rng = np.random.default_rng(1)
    drawn = {swap_value_word("Blue Jeans", "Blue", COLOURS, rng)[1] for _ in range(200)}  # type: ignore[index]
    assert "Navy Blue" not in drawn and "Blue" not in drawn
    assert drawn == {"Black", "Red", "White", "Off White"}


def test_weights_decide_which_values_are_drawn() -> None:
    rng = np.random.default_rng(2)
    weights = {"Red": 1.0, "Black": 0.0}
    drawn = {swap_value_word("White Shirt", "White", COLOURS, rng, weights)[1] for _ in range(50)}  # type: ignore[index]
    assert drawn == {"Red"}


def test_gender_words_are_matched_whole_and_case_blind() -> None:
    assert names_value("Puma Men's Speed Cat Shoe", "Men")
    assert not names_value("Puma Women's Speed Cat Shoe", "Men")
    assert names_value("NIKE MEN SHOES", "Men")
    assert overlapping("Blue", "Navy Blue") and not overlapping("Men", "Women")
