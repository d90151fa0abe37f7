from __future__ import annotations

from pathlib import Path

import pytest
import torch

import learner
from learner.model.classifier import AttributeClassifier
from learner.model.taxonomy import load_taxonomy

TAXONOMY = Path(learner.__file__).parent / "taxonomies" / "clothing-cc0.yaml"


def test_heads_see_the_pooled_output_of_each_tapped_stage():
    torch.manual_seed(0)
    taxonomy = load_taxonomy(TAXONOMY)
    plain = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=False)
    tapped = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=False, tap_stages=(5, 3))
    assert tapped.tap_stages == (3, 5)
    # EfficientNet-Lite0: stage 3 ends with 40 channels, stage 5 with 112, the backbone pools 1280
    for name, head in tapped.heads.items():
        assert head.in_features == plain.heads[name].in_features + 40 + 112

    tapped.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = tapped(x)
        # the tapped part of the head's weights must matter: zero it and the outputs change
        for head in tapped.heads.values():
            head.weight[:, 1280:] = 0
        after = tapped(x)
    assert not torch.allclose(before["garment"], after["garment"])


def test_taps_leave_no_hooks_behind_after_a_forward_pass():
    taxonomy = load_taxonomy(TAXONOMY)
    model = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=False, tap_stages=(3,)).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))
    assert all(not stage._forward_hooks for stage in model._stages if isinstance(stage, torch.nn.Module))


def test_a_stage_that_cannot_be_tapped_is_named_in_the_error():
    taxonomy = load_taxonomy(TAXONOMY)
    with pytest.raises(ValueError, match="stage 0 cannot be tapped; choose from"):
        AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=False, tap_stages=(0,))
    with pytest.raises(ValueError, match="stage 42 cannot be tapped"):
        AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=False, tap_stages=(42,))


def test_foreground_pooling_averages_only_the_product_not_the_white_background():
    from learner.model.backbones import build_backbone
    from learner.model.classifier import foreground_mask, masked_average

    pre = build_backbone("tf_efficientnet_lite0", pretrained=False).preprocessing
    rgb = torch.ones(1, 3, 8, 8)  # white studio background
    rgb[:, :, :4, :4] = torch.tensor([0.1, 0.2, 0.7]).view(1, 3, 1, 1)  # a blue product, top-left quarter
    x = (rgb - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    mask = foreground_mask(x, pre)
    assert mask.sum() == 16 and mask[0, 0, :4, :4].all()

    features = torch.zeros(1, 2, 4, 4)
    features[:, 0, :2, :2] = 1.0  # channel 0 fires on the product only
    features[:, 1] = 3.0  # channel 1 is constant
    pooled = masked_average(features, mask, floor=0.0)
    assert torch.allclose(pooled, torch.tensor([[1.0, 3.0]]))
    assert torch.allclose(masked_average(features, mask)[0, 0], torch.tensor(1.0), atol=0.01)


def test_foreground_pooling_of_a_photo_without_background_is_the_plain_average():
    from learner.model.classifier import masked_average

    features = torch.randn(2, 5, 7, 7)
    for mask in (torch.zeros(2, 1, 28, 28), torch.ones(2, 1, 28, 28)):
        assert torch.allclose(masked_average(features, mask), features.mean(dim=(2, 3)), atol=1e-5)


def test_an_unknown_tap_pooling_is_refused():
    taxonomy = load_taxonomy(TAXONOMY)
    with pytest.raises(ValueError, match="tap_pooling must be one of mean, foreground"):
        AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=False, tap_stages=(3,), tap_pooling="max")
