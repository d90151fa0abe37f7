from __future__ import annotations

import pytest

from learner.model.taxonomy import TaxonomyError, load_taxonomy, parse_taxonomy

GOOD = """\
schema_version: 1
name: t
groups:
  colour:
    kind: single
    values: [Red, Blue]
  tags:
    kind: multi
    source: detector
    values: [handbag]
detector_mapping:
  handbag: {tags: handbag}
"""


def test_builtin_fashion_taxonomy_loads_with_its_groups_in_file_order():
    t = load_taxonomy("fashion-products")
    assert [g.name for g in t.classifier_groups] == [
        "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage",
    ]  # fmt: skip
    assert t.group("baseColour").colour
    assert t.attributes_for_detection("backpack")["articleType"] == "Backpacks"


def test_a_valid_file_gives_single_and_multi_groups():
    t = parse_taxonomy(GOOD)
    assert t.group("colour").kind == "single"
    assert t.group("tags").multi_label
    assert t.group("colour").label_column == "colour"


@pytest.mark.parametrize(
    ("mutation", "expected_where", "expected_message"),
    [
        (
            ("kind: single\n    values: [Red, Blue]", "kind: sinlge\n    values: [Red, Blue]"),
            "groups.colour.kind (line 5)",
            "single",
        ),
        (("values: [Red, Blue]", "values: [Red, Red]"), "groups.colour.values (line 6)", "listed twice"),
        (("    values: [Red, Blue]", "    valeus: [Red, Blue]"), "groups.colour.valeus (line 6)", "unknown key"),
        (
            ("handbag: {tags: handbag}", "handbag: {tags: purse}"),
            "detector_mapping.handbag.tags (line 12)",
            "not a value",
        ),
        (
            ("handbag: {tags: handbag}", "handbag: {size: big}"),
            "detector_mapping.handbag.size (line 12)",
            "unknown attribute group",
        ),
        (("schema_version: 1", "schema_version: 7"), "schema_version (line 1)", "unsupported schema_version"),
    ],
)
def test_validation_errors_name_the_offending_key_and_line(mutation, expected_where, expected_message):
    old, new = mutation
    assert old in GOOD
    with pytest.raises(TaxonomyError) as err:
        parse_taxonomy(GOOD.replace(old, new, 1), "shop.yaml")
    text = str(err.value)
    assert "shop.yaml" in text
    assert expected_where in text, text
    assert expected_message in text, text


def test_a_duplicated_key_is_reported_with_its_line():
    broken = GOOD.replace("  tags:\n", "  colour:\n    kind: single\n    values: [A, B]\n  tags:\n")
    with pytest.raises(TaxonomyError, match=r"groups.colour \(line 7\).*twice"):
        parse_taxonomy(broken)


def test_broken_yaml_reports_the_line():
    with pytest.raises(TaxonomyError, match=r"line 3"):
        parse_taxonomy("schema_version: 1\nname: t\ngroups: a: b\nx: 1\n")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TaxonomyError, match="cannot read"):
        load_taxonomy(tmp_path / "nope.yaml")
