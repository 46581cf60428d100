"""Is your compressed model still the same function? Check it in Python, beside your own pipeline."""

import copy

import torch

import funclens


def net():  # any classifier of yours
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


torch.manual_seed(0)
test_x, test_y = torch.randn(500, 1, 8, 8), torch.randint(0, 10, (500,))
base = net()
fp16 = copy.deepcopy(base).half().float()  # your compressed model; here: weights rounded to fp16
result = funclens.compare_models(base, {"fp16": fp16}, test_x, test_y, independents=[net(), net()])
for row in result["rows"]:
    print(row["setting"], row["disagreement"], row["verdict"])
