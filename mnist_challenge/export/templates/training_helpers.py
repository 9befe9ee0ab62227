import math

import torch
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081  # as the data cell defines them (importing that cell would load MNIST)

# --- cell ---
BACKGROUND, WHITE = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD  # black and white pixels after normalisation


def random_affine(x, generator, config):
    """An independent random rotation / shift / zoom / shear of each image of a batch, in one grid_sample."""
    c = config
    if not any(c[k] > 0 for k in ("rotation", "translate", "scale", "shear")):
        return x
    b = x.shape[0]

    def uniform(limit):
        return (torch.rand(b, generator=generator, device=x.device) * 2 - 1) * limit

    angle, shear = uniform(math.radians(c["rotation"])), uniform(math.radians(c["shear"]))
    zoom = 1 + uniform(c["scale"])
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = cos / zoom
    theta[:, 0, 1] = (-sin + torch.tan(shear) * cos) / zoom
    theta[:, 1, 0] = sin / zoom
    theta[:, 1, 1] = (cos + torch.tan(shear) * sin) / zoom
    theta[:, 0, 2] = uniform(2 * c["translate"])
    theta[:, 1, 2] = uniform(2 * c["translate"])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - BACKGROUND, grid, align_corners=False) + BACKGROUND  # zero padding = background


def random_brightness_contrast(x, generator, config):
    """Each image's pixel values v (0 to 1) become clamp(factor * v + shift, 0, 1), drawn per image; computed on
    the normalised values."""
    c = config
    if not (c["brightness"] > 0 or c["contrast"] > 0):
        return x
    shape = (x.shape[0], 1, 1, 1)
    factor = 1 + (torch.rand(shape, generator=generator, device=x.device) * 2 - 1) * c["contrast"]
    shift = (torch.rand(shape, generator=generator, device=x.device) * 2 - 1) * c["brightness"]
    return (x * factor + ((factor - 1) * MEAN + shift) / STD).clamp(BACKGROUND, WHITE)


@torch.no_grad()
def evaluate(model, images, labels, batch=1000):
    """(mean loss, accuracy in %) of ``model`` on the images, in eval mode; the model is left in train mode."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(images), batch):
        out = model(images[i : i + batch])
        loss += F.nll_loss(out, labels[i : i + batch], reduction="sum").item()
        correct += (out.argmax(1) == labels[i : i + batch]).sum().item()
    model.train()
    return loss / len(images), 100.0 * correct / len(images)


class WeightEMA:
    """An exponential moving average of every float tensor of the state (weights and BN statistics)."""

    def __init__(self, model, decay):
        state = model.state_dict()
        self.live = [v for v in state.values() if v.dtype.is_floating_point]
        self.shadow = [t.detach().clone() for t in self.live]
        self.decay, self.steps = decay, 0

    @torch.no_grad()
    def update(self):
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))  # a short warm-up
        torch._foreach_lerp_(self.shadow, self.live, 1.0 - decay)

    @torch.no_grad()
    def swap(self):
        """Exchange the live and the averaged weights (evaluate with the average, then swap back)."""
        for live, shadow in zip(self.live, self.shadow):
            tmp = live.clone()
            live.copy_(shadow)
            shadow.copy_(tmp)
