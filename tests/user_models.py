"""A user's own model for the API tests (in-process and under torchrun): nothing kdlab-specific."""

from torch import nn


class TinyCNN(nn.Module):
    """Named blocks on 1×8×8 inputs, three classes by default; ``width`` sets the size (teacher vs student)."""

    def __init__(self, width: int, classes: int = 3) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Linear(2 * width * 4 * 4, classes)

    def forward(self, x):
        return self.head(self.block2(self.block1(x)).flatten(1))
