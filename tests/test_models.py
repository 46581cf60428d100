import pytest
import torch

from funclens.models import count_parameters, create_model, list_models

SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 100), ((1, 8, 8), 10)]


def test_registry_lists_the_papers_architectures():
    assert {"lenet", "resnet50", "mobilenet_v1"} <= set(list_models())


def test_lenet_has_the_papers_parameter_count():
    assert count_parameters(create_model("lenet", in_shape=(1, 28, 28), num_classes=10)) == 225_034


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape,classes", SHAPES)
def test_every_model_maps_a_batch_to_logits(name, shape, classes):
    torch.manual_seed(0)
    m = create_model(name, in_shape=shape, num_classes=classes).eval()
    with torch.no_grad():
        y = m(torch.randn(2, *shape))
    assert y.shape == (2, classes) and torch.isfinite(y).all()


def test_mobilenet_v1_has_28_layers():
    m = create_model("mobilenet_v1", in_shape=(3, 32, 32), num_classes=10)
    layers = [x for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 28
    assert sum(1 for x in layers if isinstance(x, torch.nn.Conv2d) and x.groups > 1) == 13


def test_same_seed_same_initial_weights():
    a, b = [(torch.manual_seed(3), create_model("lenet", in_shape=(1, 8, 8), num_classes=10))[1] for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_lenet_pools_before_relu_with_the_same_function_and_gradients():
    torch.manual_seed(0)
    m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    x = torch.randn(8, 1, 28, 28)

    def paper_order(x):  # the textbook order: conv, relu, pool
        x = m.pool(torch.relu(m.conv1(x)))
        x = m.pool(torch.relu(m.conv2(x)))
        return m.fc2(torch.relu(m.fc1(torch.flatten(x, 1))))

    grads = []
    for f in (m, paper_order):
        m.zero_grad()
        y = f(x)
        y.square().sum().backward()
        grads.append((y.detach().clone(), [p.grad.clone() for p in m.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
