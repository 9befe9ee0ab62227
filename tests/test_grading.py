"""``inspect --notebook`` and ``check-notebook`` on notebooks written the way students write them.

Each notebook is built here as nbformat-4 JSON: the course's model / summary / train-test cells with their outputs
(tqdm's carriage returns, the ``Test set:`` line), and the variations the grader must handle. Most tests run the
model-building worker inline (``inline_worker``) to keep the suite fast; the subprocess itself, its time limit and
the kit's own notebooks are tested through the real command line.
"""

from __future__ import annotations

import csv
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_challenge.architecture.model import count_params
from mnist_challenge.cli.main import main as kit
from mnist_challenge.grading.grade import grade_notebook
from mnist_challenge.runs.budgets import RULES

from .conftest import ROOT, assert_one_error_line, call, run_cli

IMPORTS = """\
from __future__ import print_function
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torchvision import datasets, transforms
from torchsummary import summary
from tqdm import tqdm
"""

NET = """\
dropout_value = 0.05

class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.convblock1 = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(8), nn.Dropout(dropout_value))
        self.convblock2 = nn.Sequential(
            nn.Conv2d(8, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16), nn.Dropout(dropout_value))
        self.pool1 = nn.MaxPool2d(2, 2)
        self.convblock3 = nn.Sequential(
            nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16), nn.Dropout(dropout_value))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.convblock4 = nn.Sequential(nn.Conv2d(16, 10, 1, bias=False))

    def forward(self, x):
        x = self.convblock2(self.convblock1(x))
        x = self.convblock3(self.pool1(x))
        x = self.convblock4(self.gap(x))
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)
"""

SUMMARY_CELL = """\
!pip install torchsummary
use_cuda = torch.cuda.is_available()
device = torch.device("cuda" if use_cuda else "cpu")
model = Net().to(device)
summary(model, input_size=(1, 28, 28))
"""

DATA_CELL = """\
torch.manual_seed(1)
train_loader = torch.utils.data.DataLoader(
    datasets.MNIST('../data', train=True, download=True, transform=transforms.ToTensor()), batch_size=128)
test_loader = torch.utils.data.DataLoader(datasets.MNIST('../data', train=False, transform=transforms.ToTensor()))
raise SystemExit("the grader must never run this cell")
"""

TRAIN_TEST_CELL = """\
def train(model, device, train_loader, optimizer, epoch):
    model.train()
    pbar = tqdm(train_loader)
    for batch_idx, (data, target) in enumerate(pbar):
        optimizer.zero_grad()
        loss = F.nll_loss(model(data.to(device)), target.to(device))
        loss.backward()
        optimizer.step()
        pbar.set_description(desc=f'Loss={loss.item()} Batch_id={batch_idx}')

def test(model, device, test_loader):
    model.eval()
    correct = 0
    print('\\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.2f}%)\\n'.format(
        0.0, correct, len(test_loader.dataset), 100. * correct / len(test_loader.dataset)))
"""

RUN_CELL = """\
%%capture --no-display
"""  # a cell magic: never parsed

LOOP_CELL = """\
model = Net().to(device)
optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
for epoch in range(1, EPOCHS + 1):
    print("EPOCH:", epoch)
    train(model, device, train_loader, optimizer, epoch)
    test(model, device, test_loader)
"""


def stream(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def course_log(accs: list[float], total: int = 10000, edit: dict[int, str] | None = None) -> list[dict]:
    """The outputs of the course's training loop: per epoch an EPOCH line, tqdm's redraws, the Test set line."""
    outputs = []
    for epoch, acc in enumerate(accs, start=1):
        correct = round(acc * total / 100)
        shown = (edit or {}).get(epoch, f"{100 * correct / total:.2f}")
        bar = "".join(f"\rLoss=0.1 Batch_id={i} Accuracy=98.{i}: {i}%|##| {i}/469" for i in (10, 50, 99))
        outputs += [
            stream(f"EPOCH: {epoch}\n"),
            stream(bar + "\n", "stderr"),
            stream(f"\nTest set: Average loss: 0.0213, Accuracy: {correct}/{total} ({shown}%)\n\n"),
        ]
    return outputs


def summary_output(params: int) -> list[dict]:
    return [
        stream(
            "----------------------------------------------------------------\n"
            "        Layer (type)               Output Shape         Param #\n"
            f"================================================================\nTotal params: {params:,}\n"
            f"Trainable params: {params:,}\nNon-trainable params: 0\n"
        )
    ]


def code(source: str, outputs: list[dict] | None = None, count: int | None = None) -> dict:
    return {"cell_type": "code", "source": source, "outputs": outputs or [], "execution_count": count,
            "metadata": {}}  # fmt: skip


def markdown(text: str) -> dict:
    return {"cell_type": "markdown", "source": text, "metadata": {}}


def write_notebook(path: Path, cells: list[dict]) -> Path:
    counter = 0
    for cell in cells:  # execution counts in order unless a test set them
        if cell["cell_type"] == "code" and cell["execution_count"] is None and cell["outputs"] is not None:
            counter += 1
            cell["execution_count"] = counter
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def params_of(source: str, name: str = "Net") -> int:
    namespace: dict = {"nn": nn, "torch": torch, "F": torch.nn.functional}
    exec(textwrap.dedent(source), namespace)
    return count_params(namespace[name]())


PASSING = [98.5, 98.9, 99.0, 99.1, 99.2, 99.25, 99.3, 99.3, 99.35, 99.38, 99.4, 99.42, 99.41, 99.45, 99.44]


def course_notebook(path: Path, accs=PASSING, net: str = NET, epochs_const: int | None = None, **log) -> Path:
    params = params_of(net)
    return write_notebook(
        path,
        [
            markdown("# MNIST under 20k parameters"),
            code(IMPORTS),
            code(net),
            code(SUMMARY_CELL, summary_output(params)),
            code(DATA_CELL),
            code(TRAIN_TEST_CELL),
            code(f"EPOCHS = {epochs_const or len(accs)}"),
            code(LOOP_CELL, course_log(accs, **log)),
        ],
    )


def grade(path: Path, rules: str = "original", **limits):
    chosen = RULES[rules]
    return grade_notebook(str(path), chosen.limits if not limits else type(chosen.limits)(**limits), chosen.requires)


def result(g, prefix: str) -> str:
    return next(r["result"] for r in g.rules if r["rule"].startswith(prefix))


def test_course_notebook_passes_and_every_figure_is_read(tmp_path, inline_worker):
    g = grade(course_notebook(tmp_path / "course.ipynb"))
    assert g.verdict == "PASS", g.format()
    assert g.params == params_of(NET) == g.params_claimed and g.has_linear is False
    assert g.log_format == "course" and g.epochs == 15
    assert [round(a, 2) for a in g.test_acc] == PASSING and not g.flags
    assert g.model.startswith("model = Net() (trained in cell 8)")


def test_a_sequential_model_and_view_after_a_1x1_conv_are_no_fc(tmp_path, inline_worker):
    sequential = """\
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 10, 3), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.LogSoftmax(dim=1)).to(device)
    """
    path = write_notebook(
        tmp_path / "seq.ipynb",
        [code(IMPORTS), code("device = torch.device('cpu')"), code(textwrap.dedent(sequential)),
         code(LOOP_CELL.replace("model = Net().to(device)\n", ""), course_log(PASSING))],
    )  # fmt: skip
    g = grade(path)
    assert g.params == 8 * 9 + 8 + 10 * 8 * 9 + 10 and g.has_linear is False
    assert g.verdict == "PASS", g.format()
    assert "nn.Sequential" in g.model


def test_a_hidden_linear_layer_fails_with_its_cell_and_line(tmp_path, inline_worker):
    hidden = NET.replace(
        "        self.convblock4 = nn.Sequential(nn.Conv2d(16, 10, 1, bias=False))",
        "        self.convblock4 = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False))\n"
        "        self.classifier = nn.Linear(16, 10)",
    ).replace("x = x.view(-1, 10)", "x = self.classifier(x.view(-1, 16))")
    g = grade(course_notebook(tmp_path / "hidden.ipynb", net=hidden))
    assert g.verdict == "FAIL" and result(g, "no fully connected") == "FAIL"
    figure = next(r["figure"] for r in g.rules if r["rule"] == "no fully connected layer")
    assert "classifier" in figure and "cell 3, line 15" in figure


def test_only_the_trained_models_torchsummary_is_compared(tmp_path, inline_worker):
    other = NET.replace("class Net(", "class BigNet(").replace("super(Net", "super(BigNet")
    big = params_of(other, "BigNet") + 1234
    cells = [code(IMPORTS), code(other), code(NET),
             code("device = torch.device('cpu')\nsummary(BigNet().to(device), (1, 28, 28))", summary_output(big)),
             code(TRAIN_TEST_CELL), code(LOOP_CELL, course_log(PASSING))]  # fmt: skip
    g = grade(write_notebook(tmp_path / "other.ipynb", cells))
    assert g.model.startswith("model = Net()") and g.params == params_of(NET)
    assert not g.flags and g.verdict == "PASS", g.format()  # a second model's summary is not the graded one's
    cells[3] = code("device = torch.device('cpu')\nmodel = Net()\nsummary(model, (1, 28, 28))", summary_output(big))
    g = grade(write_notebook(tmp_path / "edited.ipynb", cells))
    assert any(f"torchsummary shows {big:,} (cell 4)" in f for f in g.flags), g.flags


def test_no_outputs_is_unverifiable_never_a_guess(tmp_path, inline_worker):
    path = course_notebook(tmp_path / "blank.ipynb")
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(nb))
    g = grade(path)
    assert g.verdict == "UNVERIFIABLE" and result(g, "parameters") == "PASS"
    assert result(g, "epochs") == result(g, "test accuracy") == "UNVERIFIABLE"
    assert "logs are not visible" in g.format()


def test_25_epochs_fail_the_epoch_rule(tmp_path, inline_worker):
    g = grade(course_notebook(tmp_path / "long.ipynb", accs=[99.0] * 10 + PASSING))
    assert g.epochs == 25 and result(g, "epochs") == "FAIL" and g.verdict == "FAIL"


def test_a_log_edited_to_show_99_4_is_judged_by_its_count_and_flagged(tmp_path, inline_worker):
    accs = PASSING[:-3] + [99.35, 99.36, 99.38]
    g = grade(course_notebook(tmp_path / "edited.ipynb", accs=accs, edit={13: "99.40", 14: "99.41", 15: "99.42"}))
    assert result(g, "test accuracy") == "FAIL" and g.verdict == "FAIL"
    assert sum("disagrees with its own count" in f for f in g.flags) == 3


def test_a_class_split_over_two_cells_and_helper_blocks(tmp_path, inline_worker):
    first = """\
    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1, self.b2, self.head = Block(1, 8), Block(8, 16), nn.Conv2d(16, 10, 1)
    """
    second = """\
    def forward(self, x):
        x = F.max_pool2d(self.b1(x), 2)
        x = self.head(self.b2(x)).mean([2, 3])
        return F.log_softmax(x, dim=1)

    Net.forward = forward
    """
    cells = [code(IMPORTS), code(textwrap.dedent(first)), code(textwrap.dedent(second)),
             code("device = 'cpu'"), code(TRAIN_TEST_CELL), code(LOOP_CELL, course_log(PASSING))]  # fmt: skip
    g = grade(write_notebook(tmp_path / "split.ipynb", cells), "bn-dropout-gap")
    assert g.params == 72 + 16 + 1152 + 32 + 170
    assert result(g, "uses BatchNorm") == "PASS" and result(g, "uses global average pooling") == "PASS"
    assert result(g, "uses Dropout") == "FAIL" and g.verdict == "FAIL"


def test_an_overridden_call_is_inspected(tmp_path, inline_worker):
    net = NET.replace("    def forward(self, x):", "    def __call__(self, x):")
    g = grade(course_notebook(tmp_path / "call.ipynb", net=net))
    assert g.params == params_of(NET) and g.verdict == "PASS", g.format()


@pytest.mark.parametrize(
    "line, fmt",
    [
        ("Val Accuracy: {c}/10000 | Percent: {p}%", "val-percent"),
        ("Epoch {e} | train loss 0.02 | Test Accuracy: {p}", "epoch-test-accuracy"),
        ("epoch={e} test_acc={f}", "epoch-test-accuracy"),
        ("test loss 0.02, test accuracy {p}%", "test-accuracy"),
    ],
)
def test_each_log_format_is_read_and_named(tmp_path, inline_worker, line, fmt):
    lines = "".join(
        line.format(e=e, c=round(a * 100), p=f"{a:.2f}", f=f"{a / 100:.4f}") + "\n" for e, a in enumerate(PASSING, 1)
    )
    cells = [code(IMPORTS), code(NET), code("device = 'cpu'"), code(TRAIN_TEST_CELL), code(LOOP_CELL, [stream(lines)])]
    g = grade(write_notebook(tmp_path / "fmt.ipynb", cells))
    assert g.log_format == fmt and [round(a, 2) for a in g.test_acc] == PASSING and g.verdict == "PASS", g.format()


def test_claims_order_and_several_runs_are_flagged(tmp_path, inline_worker):
    better = PASSING[:-3] + [99.5, 99.5, 99.5]
    cells = [markdown("# Final accuracy: 99.62% with 6k params"), code(IMPORTS, count=1), code(NET, count=9),
             code("device = 'cpu'", count=2), code(TRAIN_TEST_CELL, count=3),
             code(LOOP_CELL, course_log(better), count=4), code(LOOP_CELL, course_log(PASSING), count=5)]  # fmt: skip
    g = grade(write_notebook(tmp_path / "mnist_99_7.ipynb", cells))
    text = "\n".join(g.flags)
    assert "markdown cell 1 claims 99.62%" in text and "the file name claims 99.7%" in text
    assert "execution counts" not in text and "class Net (cell 3, [9]) was run after" in text
    assert "2 training runs logged" in text and "an earlier run (cell 6) did better" in text
    assert g.test_acc[-1] == pytest.approx(99.44)  # the last run is graded


def test_pasted_log_lines_printed_by_no_code_are_flagged(tmp_path, inline_worker):
    cells = [code(IMPORTS), code(NET), code("device = 'cpu'"), code("model = Net()", course_log(PASSING))]
    g = grade(write_notebook(tmp_path / "pasted.ipynb", cells))
    assert any("cell 4 shows epoch lines but its code (only 'model = Net()') prints nothing" in f for f in g.flags)


def test_model_choice_by_name_and_by_the_only_class(tmp_path, inline_worker, capsys):
    other = NET.replace("class Net(", "class Wide(").replace("super(Net", "super(Wide").replace("16", "24")
    path = write_notebook(tmp_path / "two.ipynb", [code(IMPORTS), code(NET), code(other)])
    code_, _, err = call(kit, "inspect", "--notebook", str(path))
    assert code_ == 2 and "several nn.Module classes (Net, Wide)" in err and f"{path}:NAME" in err
    code_, out, err = call(kit, "inspect", "--notebook", f"{path}:Wide", "--json")
    assert code_ == 0 and json.loads(out)["params"] == params_of(other, "Wide")
    alone = write_notebook(tmp_path / "one.ipynb", [code(IMPORTS), code(NET)])
    code_, out, err = call(kit, "inspect", "--notebook", str(alone))
    assert code_ == 0 and "the notebook's only nn.Module class" in err and "parameters" in out.lower()


def test_a_model_from_the_authors_package_is_one_clear_error(tmp_path, inline_worker):
    path = write_notebook(
        tmp_path / "pkg.ipynb",
        [code("import torch\nfrom mymodels.small import Net"), code("model = Net().to('cpu')\n"
                                                                  "optimizer = torch.optim.SGD(model.parameters())")],
    )  # fmt: skip
    assert_one_error_line(call(kit, "inspect", "--notebook", str(path)), "not a .py file beside the notebook")


def test_bad_notebooks_are_one_error_line(tmp_path):
    (tmp_path / "bad.ipynb").write_text("{not json")
    (tmp_path / "list.ipynb").write_text("[]")
    for target, needle in (
        (tmp_path / "missing.ipynb", "notebook not found"),
        (tmp_path / "bad.ipynb", "not a readable .ipynb"),
        (tmp_path / "list.ipynb", "no list of cells"),
        (tmp_path, "is a folder"),
    ):
        assert_one_error_line(call(kit, "inspect", "--notebook", str(target)), needle)
    assert_one_error_line(call(kit, "check-notebook", str(tmp_path / "bad.ipynb"), "--rules", "nope"), "--rules 'nope'")
    broken = write_notebook(tmp_path / "typo.ipynb", [code(IMPORTS), code("class Net(nn.Module:\n    pass")])
    assert_one_error_line(call(kit, "inspect", "--notebook", str(broken)), "cells [2] are not valid Python")


def test_a_batch_gives_a_table_and_csv_and_goes_on_past_a_bad_file(tmp_path, inline_worker):
    good = course_notebook(tmp_path / "good.ipynb")
    failing = course_notebook(tmp_path / "long.ipynb", accs=[99.0] * 10 + PASSING)
    (tmp_path / "broken.ipynb").write_text("{")
    out_csv = tmp_path / "grades" / "table.csv"
    code_, out, err = call(kit, "check-notebook", str(good), str(failing), str(tmp_path / "broken.ipynb"),
                           "--csv", str(out_csv))  # fmt: skip
    assert code_ == 2 and "not a readable .ipynb" in err
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["verdict"] for r in rows] == ["PASS", "FAIL", "ERROR"]
    assert any(line.split()[:2] == ["notebook", "verdict"] for line in out.splitlines())
    code_, out, _ = call(kit, "check-notebook", str(good), str(failing), "--json", "--rules", "10k", "--min-acc", "99")
    graded = json.loads(out)
    assert code_ == 1 and [g["verdict"] for g in graded] == ["PASS", "FAIL"]
    assert set(graded[0]) >= {"params", "params_claimed", "has_linear", "log_format", "epochs", "test_acc", "rules",
                              "flags", "verdict"}  # fmt: skip
    assert graded[0]["rules"][0]["rule"] == "parameters < 10,000" and "99.0%" in graded[0]["rules"][3]["rule"]


def test_the_subprocess_keeps_prints_off_json_and_stops_a_hanging_model(tmp_path):
    noisy = NET.replace("        x = x.view(-1, 10)", "        print('shape', x.shape)\n        x = x.view(-1, 10)")
    path = write_notebook(tmp_path / "noisy.ipynb", [code(IMPORTS), code(noisy), code("model = Net()")])
    result_ = run_cli("mnist_challenge", "inspect", "--notebook", str(path), "--json")
    assert result_.returncode == 0, result_.stderr
    assert json.loads(result_.stdout)["params"] == params_of(NET)
    hanging = NET.replace(
        "        super(Net, self).__init__()", "        super(Net, self).__init__()\n        while True: pass"
    )
    path = write_notebook(tmp_path / "hang.ipynb", [code(IMPORTS), code(hanging), code("model = Net()")])
    code_, out, err = call(kit, "check-notebook", str(path), "--timeout", "3")
    assert code_ == 1 and "took over 3 s" in out and "UNVERIFIABLE" in out


def test_the_kits_own_notebooks_grade_as_their_checker_did(tmp_path):
    """Each submission notebook: the params of the run it was exported from, and the verdict the checker's rules
    printed inside the notebook (it trains again, so its log is its own)."""
    notebooks = sorted((ROOT / "notebooks").glob("submission_*.ipynb"))
    budget_rules = {"assignment": "original", "compact": "8k"}
    for path in notebooks:
        budget = path.stem.removeprefix("submission_")
        text = path.read_text()
        printed = "PASS" if "VERDICT: PASS" in text else "FAIL"
        run = ROOT / re.search(r"Exported from `([^`]+)`", text)[1]  # the run the notebook records it came from
        code_, out, _ = call(kit, "check-notebook", str(path), "--json", "--rules", budget_rules.get(budget, budget))
        graded = json.loads(out)[0]
        assert graded["verdict"] == printed and code_ == (0 if printed == "PASS" else 1), graded
        assert (
            graded["params"] == json.loads((run / "inspection.json").read_text())["params"] == graded["params_claimed"]
        )
        planned_epochs = json.loads((run / "config.json").read_text())["epochs"]
        assert graded["log_format"] == "kit" and graded["epochs"] == planned_epochs and not graded["flags"]


def test_layers_used_sees_functional_calls_and_ignores_layers_never_called():
    from mnist_challenge.architecture.usage import layers_used

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.unused_bn = nn.Conv2d(1, 10, 3), nn.BatchNorm2d(10)

        def forward(self, x):
            x = F.dropout(self.conv(x), 0.1, self.training)
            return x.mean(dim=(-1, -2))

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 3)

        def forward(self, x):
            x = F.batch_norm(self.conv(x), None, None, training=True)
            half = F.avg_pool2d(x, 2)  # not global: a 13x13 map
            return F.avg_pool2d(half, half.shape[-1]).flatten(1)

    used = layers_used(Functional(), (1, 28, 28))
    assert used["batchnorm"] == [] and used["dropout"] == ["model (dropout)"] and used["gap"] == ["model (mean)"]
    used = layers_used(Pooled(), (1, 28, 28))
    assert used["batchnorm"] and used["dropout"] == [] and len(used["gap"]) == 1


def test_output_picks_one_of_a_notebook_models_outputs(tmp_path, inline_worker):
    both = """\
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 10, 3), nn.Conv2d(1, 10, 5)

        def forward(self, x):
            return self.a(x).mean((2, 3)), self.b(x).mean((2, 3))
    """
    path = write_notebook(tmp_path / "both.ipynb", [code(IMPORTS), code(textwrap.dedent(both))])
    code_, out, _ = call(kit, "inspect", "--notebook", str(path), "--output", "1", "--json")
    assert (
        code_ == 0
        and json.loads(out)["receptive_field_head"] == 5
        and json.loads(out)["output_used"] == "output 1 of 2"
    )
    assert_one_error_line(call(kit, "inspect", "--notebook", str(path), "--output", "7"), "index from 0 to 1")


@pytest.mark.parametrize("command", ["check", "check-notebook", "inspect"])
def test_help_of_the_commands_that_take_rule_sets_and_notebooks(command):
    code_, out, _ = call(kit, command, "--help")
    assert code_ == 0 and ("--rules" in out or "--notebook" in out)
    if command != "inspect":
        assert "bn-dropout-gap: the original, and the model must use BatchNorm" in " ".join(out.split())
