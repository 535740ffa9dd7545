"""The models have the notes' and tutorial's exact shapes."""

import torch
from torch import nn

from cifar_exp.models import SimpleCNN, SpeedNet, TutorialNet, resnet18


def test_simple_cnn_is_the_notes_classifier():
    m = SimpleCNN()
    layers = [(type(layer).__name__, tuple(getattr(layer, "weight", torch.empty(0)).shape)) for layer in m.children()]
    assert layers == [
        ("Conv2d", (16, 3, 5, 5)),
        ("MaxPool2d", (0,)),
        ("Linear", (128, 16 * 14 * 14)),
        ("Linear", (10, 128)),
    ]
    assert m(torch.zeros(4, 3, 32, 32)).shape == (4, 10)


def test_tutorial_net_matches_the_tutorial():
    m = TutorialNet()
    assert sum(p.numel() for p in m.parameters()) == 62006  # the tutorial's LeNet


def test_resnet18_has_the_cifar_stem():
    m = resnet18(num_classes=100)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_speed_net_output_width_and_activation():
    m = SpeedNet(num_classes=10, widths=(8, 16, 32))
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert m.head.in_features == 32
    assert any(isinstance(layer, nn.GELU) for layer in m.modules())
    relu = SpeedNet(widths=(8, 16, 32), act="relu")
    assert any(isinstance(layer, nn.ReLU) for layer in relu.modules())
    assert not any(isinstance(layer, nn.GELU) for layer in relu.modules())


def test_the_notes_models_follow_the_image_size():
    for size in (16, 48, 64):
        assert SimpleCNN(image_size=size)(torch.zeros(2, 3, size, size)).shape == (2, 10)
        assert TutorialNet(image_size=size)(torch.zeros(2, 3, size, size)).shape == (2, 10)
    assert SimpleCNN().fc1.in_features == 16 * 14 * 14 and TutorialNet().fc1.in_features == 16 * 5 * 5
