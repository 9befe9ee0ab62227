"""The Python API as a notebook user meets it (issue #40): ``summary``, ``check_notebook``, ``train_model``, ``dir``."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mnist_challenge as mc
from mnist_challenge.architecture.inspector import format_report
from mnist_challenge.cli.main import main as kit

from .conftest import call
from .test_grading import course_notebook


class Net(nn.Module):
    """A course-style net: convs, BatchNorm, Dropout, MaxPool, GAP."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.drop, self.pool = nn.Dropout(0.05), nn.MaxPool2d(2, 2)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = self.pool(self.drop(self.b1(F.relu(self.c1(x)))))
        x = self.drop(self.b2(F.relu(self.c2(x))))
        return F.log_softmax(self.head(x).mean((2, 3)), dim=1)


def test_summary_repr_is_the_inspect_table_and_html_renders_it(tmp_path):
    report = mc.summary(Net(), input_size=(1, 28, 28))
    text = repr(report)
    assert text == format_report(report) and text.startswith("layer ") and "fully connected layer:" in text
    assert "parameters used in forward:     1,442" in text
    html = report._repr_html_()
    assert html.startswith("<table>") and "<td style='text-align:left'>c1</td>" in html and "1,442" in html
    code_, out, _ = call(kit, "inspect", "--module", "tests.test_api:Net")
    assert code_ == 0 and out.strip().startswith(text.split("\n")[0])  # the same table as the CLI


def test_summary_takes_a_batch_first_size_the_models_dtype_and_device():
    model = Net().double()
    report = mc.summary(model, input_size=(64, 1, 28, 28))
    assert report.input_size == (1, 28, 28) and report.params == mc.summary(Net()).params
    assert next(model.parameters()).dtype == torch.float64 and model.training  # left as it was


@pytest.mark.parametrize("size", [(28, 28), (1, 1, 1, 28, 28), "1,28,28", (1, 0, 28), (1, 28.0, 28), None])
def test_a_wrong_input_size_is_one_error_naming_the_argument(size):
    with pytest.raises(mc.UserError, match=r"^input_size=.*expected .*\(C, H, W\)"):
        mc.summary(Net(), input_size=size)


def test_dir_lists_the_public_names_and_each_has_a_docstring():
    names = dir(mc)
    assert {"summary", "check_notebook", "train_model", "build_model", "load_mnist"} <= set(names)
    for name in mc.__all__:
        if name != "__version__":
            assert (getattr(mc, name).__doc__ or "").strip(), name


def test_check_notebook_returns_the_commands_block(tmp_path, inline_worker):
    path = course_notebook(tmp_path / "course.ipynb")
    grade = mc.check_notebook(path)
    assert grade.verdict == "PASS" and repr(grade).startswith(f"== {path}") and "VERDICT: PASS" in repr(grade)
    assert "<pre>" in grade._repr_html_()
    assert mc.check_notebook(path, max_epochs=10).verdict == "FAIL"
    with pytest.raises(mc.UserError, match="unknown limit"):
        mc.check_notebook(path, epochs=10)


def test_train_model_leaves_the_callers_model_as_it_got_it(mnist_dir):
    model = Net().eval()
    before = copy.deepcopy(model.state_dict())
    classes = [type(m) for m in model.modules()]
    data = mc.load_mnist(str(mnist_dir), val_size=0, train_subset=512)
    config = mc.TrainConfig(epochs=1, val_size=0, device="cpu", batch_size=64)
    result = mc.train_model(model, data, config, progress=False)
    assert [type(m) for m in model.modules()] == classes and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype == torch.float32
    trained = result.model
    assert type(trained) is Net and [type(m) for m in trained.modules()] == classes and not trained.training
    assert not torch.equal(trained.c1.weight, model.c1.weight) and len(result.epochs) == 1
    model.load_state_dict(trained.state_dict())  # the way to take the trained weights


def test_the_python_blocks_of_the_readme_and_the_api_page_run(tmp_path, inline_worker, monkeypatch):
    """Each python block of the README and of the command reference's "Python API" section, in order, as a
    student pastes them into one notebook."""
    from .conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    api = (ROOT / "docs" / "commands.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", readme + api, re.S)
    assert len(blocks) >= 5
    course_notebook(tmp_path / "my_submission.ipynb")
    monkeypatch.chdir(tmp_path)
    namespace = {"Net": Net}
    for block in blocks:
        if "train_model" in block:  # trains for minutes: test_train_model_leaves_the_callers_model_as_it_got_it
            continue
        lines = [line for line in block.splitlines() if not line.startswith(("!", "%"))]
        exec("\n".join(lines), namespace)
