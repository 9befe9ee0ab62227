import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mnist_challenge.export.templates.setup import DEVICE, SMOKE
from mnist_challenge.export.templates.training_helpers import (
    WeightEMA,
    evaluate,
    random_affine,
    random_brightness_contrast,
)

if TYPE_CHECKING:  # the data and model cells, which load MNIST and build the network
    from mnist_challenge.export.templates.data import test_x, test_y, train_x, train_y
    from mnist_challenge.export.templates.generated import CONFIG
    from mnist_challenge.export.templates.summary import model

# --- cell ---
c = CONFIG
epochs = 1 if SMOKE else c["epochs"]
generator = torch.Generator(device=DEVICE).manual_seed(c["seed"])
n = len(train_x)
steps = n // c["batch_size"] + (1 if n % c["batch_size"] >= 2 else 0)  # a 1-image batch would break BatchNorm
if c["optimizer"] == "sgd":
    opt = torch.optim.SGD(
        model.parameters(), lr=c["lr"], momentum=c["momentum"], nesterov=c["nesterov"], weight_decay=c["weight_decay"]
    )
else:
    opt = torch.optim.AdamW(
        model.parameters(), lr=c["lr"], betas=(c["momentum"], 0.999), weight_decay=c["weight_decay"]
    )
if c["schedule"] == "onecycle":  # stepped every batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], epochs=epochs, steps_per_epoch=steps)
elif c["schedule"] == "step":  # stepped every epoch
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=c["step_size"], gamma=c["gamma"])
else:
    sched = None
ema = WeightEMA(model, c["ema_decay"]) if c["ema_decay"] > 0 else None
history = []
for epoch in range(1, epochs + 1):
    lr, start = opt.param_groups[0]["lr"], time.perf_counter()
    order = torch.randperm(n, device=DEVICE, generator=generator)
    loss_sum, correct = torch.zeros((), device=DEVICE), torch.zeros((), device=DEVICE, dtype=torch.int64)
    for step in range(steps):
        idx = order[step * c["batch_size"] : (step + 1) * c["batch_size"]]
        x = random_brightness_contrast(random_affine(train_x[idx], generator, c), generator, c)
        y = train_y[idx]
        out = model(x)
        loss = F.cross_entropy(out, y, label_smoothing=c["label_smoothing"])  # log-probs in: label smoothing
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update()
        if c["schedule"] == "onecycle":
            sched.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
    if c["schedule"] == "step":
        sched.step()
    seconds = time.perf_counter() - start
    seen = min(n, steps * c["batch_size"])
    if ema is not None:
        ema.swap()  # the averaged weights are the model that is evaluated
    test_loss, test_acc = evaluate(model, test_x, test_y)
    if ema is not None:
        ema.swap()
    row = dict(
        epoch=epoch,
        lr=lr,
        train_loss=loss_sum.item() / seen,
        train_acc=100.0 * correct.item() / seen,
        test_loss=test_loss,
        test_acc=test_acc,
        seconds=seconds,
    )
    history.append(row)
    print(
        f"EPOCH {epoch:>2}/{epochs} | lr {lr:.5f} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
        f"test loss {test_loss:.4f} acc {test_acc:.2f}% | {seconds:.1f}s"
    )
if ema is not None:
    ema.swap()  # keep the averaged weights: they are the trained model
print(f"training time {sum(r['seconds'] for r in history):.0f} s on {DEVICE}")
