from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnist_challenge.export.templates.generated import LIMITS
    from mnist_challenge.export.templates.training import history

# --- cell ---
import matplotlib.pyplot as plt

fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
epochs_axis = [r["epoch"] for r in history]
for key, label in (("train_loss", "train"), ("test_loss", "test")):
    ax_loss.plot(epochs_axis, [r[key] for r in history], marker="o", label=label)
for key, label in (("train_acc", "train"), ("test_acc", "test")):
    ax_acc.plot(epochs_axis, [r[key] for r in history], marker="o", label=label)
ax_acc.axhline(LIMITS["min_acc"], color="grey", linestyle="--", label=f"{LIMITS['min_acc']}%")
ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
for ax in (ax_loss, ax_acc):
    ax.legend()
    ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()
