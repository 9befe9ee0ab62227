"""What the cells the exporter writes (the model cell, the recipe cell) define, typed for the other cells'
linting; never imported at run time."""

from typing import Any

from torch import nn

CONFIG: dict[str, Any]  # the run's recipe (notebook._config_code)
LIMITS: dict[str, Any]  # the rules (notebook._config_code)


class Net(nn.Module):  # the spec's network (notebook.model_code)
    pass
