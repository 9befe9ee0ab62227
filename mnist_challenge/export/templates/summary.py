from typing import TYPE_CHECKING

import torch
import torchsummary

from mnist_challenge.export.templates.setup import DEVICE

if TYPE_CHECKING:
    from mnist_challenge.export.templates.generated import CONFIG, Net

# --- cell ---
torch.manual_seed(CONFIG["seed"])
model = Net().to(DEVICE)
torchsummary.summary(model, (1, 28, 28), device=DEVICE.type)
n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"{n_params:,} trainable parameters")
