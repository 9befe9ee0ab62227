from typing import TYPE_CHECKING

from torch import nn

from mnist_challenge.export.templates.setup import SMOKE

if TYPE_CHECKING:
    from mnist_challenge.export.templates.generated import LIMITS
    from mnist_challenge.export.templates.summary import model, n_params
    from mnist_challenge.export.templates.training import history

# --- cell ---
last = history[-LIMITS["last_k"] :]
rules = [
    (f"fewer than {LIMITS['max_params']:,} parameters", n_params < LIMITS["max_params"], f"{n_params:,}"),
    ("no fully connected (Linear) layer", not any(isinstance(m, nn.Linear) for m in model.modules()), "none"),
    (f"at most {LIMITS['max_epochs']} epochs", len(history) <= LIMITS["max_epochs"], f"{len(history)}"),
    (
        f"test accuracy >= {LIMITS['min_acc']}% in each of the last {LIMITS['last_k']} epochs",
        len(last) == LIMITS["last_k"] and all(r["test_acc"] >= LIMITS["min_acc"] for r in last),
        ", ".join(f"{r['test_acc']:.2f}%" for r in last),
    ),
]
for rule, passed, value in rules:
    print(f"{'PASS' if passed else 'FAIL'}  {rule}: {value}")
print("VERDICT:", "PASS" if all(passed for _, passed, _ in rules) else "FAIL" + (" (smoke mode)" if SMOKE else ""))
