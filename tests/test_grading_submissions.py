"""``check-notebook`` on notebooks written the way students really hand them in (issue #39).

Each notebook is built here in a student's style: evaluation cells after training, the course's and other cohorts'
log formats, Keras, models imported from a file beside the notebook, honest notebooks that must raise no flag,
and hostile ones whose code tries to forge its grade, read the grader's secrets, write outside its scratch folder,
reach the network, leave a process behind or take all memory. Most run the model-building worker inline (fast);
the containment tests run the real sandbox.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_challenge.cli.main import main as kit
from mnist_challenge.grading.epoch_log import read_epoch_log
from mnist_challenge.grading.ipynb import read_notebook
from mnist_challenge.grading.sandbox import containment
from mnist_challenge.grading.structure import read_structure

from .conftest import ROOT, call
from .test_grading import (
    IMPORTS,
    LOOP_CELL,
    NET,
    PASSING,
    SUMMARY_CELL,
    TRAIN_TEST_CELL,
    code,
    course_log,
    course_notebook,
    grade,
    params_of,
    result,
    stream,
    summary_output,
    write_notebook,
)

bubblewrap = pytest.mark.skipif(containment() != "bubblewrap", reason="bubblewrap is not usable here")


def course_cells(accs=PASSING, net: str = NET, params: int | None = None, **log) -> list[dict]:
    return [
        code(IMPORTS),
        code(net),
        code(SUMMARY_CELL, summary_output(params or params_of(net))),
        code(TRAIN_TEST_CELL),
        code(f"EPOCHS = {len(accs)}"),
        code(LOOP_CELL, course_log(accs, **log)),
    ]


def test_evaluation_cells_after_training_are_not_training_runs(tmp_path, inline_worker):
    final = code(
        "test(model, device, test_loader)", [stream("\nTest set: Average loss: 0.02, Accuracy: 9944/10000 (99.44%)\n")]
    )
    train_eval = code(
        "test(model, device, train_loader)",
        [stream("\nTest set: Average loss: 0.01, Accuracy: 59782/60000 (99.64%)\n")],
    )
    g = grade(write_notebook(tmp_path / "evals.ipynb", [*course_cells(), final, train_eval, final]))
    assert g.verdict == "PASS" and g.epochs == 15 and not g.flags, g.format()
    log = read_epoch_log(
        read_notebook(tmp_path / "evals.ipynb"), read_structure(read_notebook(tmp_path / "evals.ipynb"))
    )
    assert len(log.runs) == 1 and len(log.evaluations) == 2 and log.train_set[0].total == 60000


def test_a_lone_final_test_cell_is_an_evaluation_even_without_structure(tmp_path, inline_worker):
    cells = course_cells()
    cells.append(
        code(
            "test(model, device, test_loader)",
            [stream("Test set: Average loss: 0.02, Accuracy: 9940/10000 (99.40%)\n")],
        )
    )
    g = grade(write_notebook(tmp_path / "final.ipynb", cells))
    assert g.epochs == 15 and g.verdict == "PASS", g.format()


def _lines_cell(lines: list[str], source: str = LOOP_CELL) -> dict:
    return code(source, [stream("".join(line + "\n" for line in lines))])


@pytest.mark.parametrize(
    "template, fmt",
    [
        ("Validation set: Average loss: 0.0213, Accuracy: {c}/10000 ({p1}%)", "course"),
        ("Training Accuracy:99.247, Validation Accuracy:{p3}", "val-accuracy"),
        ("Epoch {e}: Val Accuracy:  {c}/10000", "val-accuracy"),
        ("Val Accuracy:  {c}/10000 | Percent:  {p}%", "val-percent"),
    ],
)
def test_every_cohorts_log_format_is_read_and_named(tmp_path, inline_worker, template, fmt):
    lines = []
    for e, a in enumerate(PASSING, 1):
        lines += [f"EPOCH: {e}", "Loss=0.1 Batch_id=468 Accuracy=98.5: 100%|##########| 469/469"]
        lines.append(template.format(e=e, c=round(a * 100), p=f"{a:.2f}", p1=f"{a:.1f}", p3=f"{a:.3f}"))
    cells = [code(IMPORTS), code(NET), code(TRAIN_TEST_CELL), _lines_cell(lines)]
    g = grade(write_notebook(tmp_path / "fmt.ipynb", cells))
    assert g.log_format == fmt and g.epochs == 15 and g.verdict == "PASS", g.format()
    assert [round(a, 2) for a in g.test_acc] == PASSING and not g.flags, g.flags


def test_a_keras_notebook_is_graded_on_its_epochs_and_accuracy(tmp_path, inline_worker):
    lines = []
    for e, a in enumerate(PASSING, 1):
        lines += [f"Epoch {e}/15", "469/469 [==============================] - 5s 10ms/step - loss: 0.0213 - accuracy: "
                  f"0.9934 - val_loss: 0.0190 - val_accuracy: {a / 100:.4f}"]  # fmt: skip
    keras = "from tensorflow import keras\nmodel = keras.Sequential([keras.layers.Conv2D(8, 3)])\n"
    cells = [code(keras), _lines_cell(lines, "history = model.fit(x, y, epochs=15, validation_data=(xt, yt))")]
    g = grade(write_notebook(tmp_path / "keras.ipynb", cells))
    assert g.log_format == "keras" and g.epochs == 15 and result(g, "test accuracy") == "PASS", g.format()
    assert result(g, "parameters") == "UNVERIFIABLE" and "Keras model" in g.format() and g.verdict == "UNVERIFIABLE"


def test_rounded_percentages_agree_with_their_counts(tmp_path, inline_worker):
    g = grade(
        write_notebook(tmp_path / "round.ipynb", course_cells(edit={e: f"{a:.0f}" for e, a in enumerate(PASSING, 1)}))
    )
    assert not g.flags, g.flags
    g = grade(write_notebook(tmp_path / "round1.ipynb", course_cells(edit={14: "99.5"})))  # 99.45 at {:.1f}
    assert not g.flags, g.flags
    g = grade(write_notebook(tmp_path / "edited.ipynb", course_cells(edit={14: "99.6"})))
    assert any("disagrees with its own count" in f and "cell 6, output line" in f for f in g.flags), g.flags


def test_a_model_needing_an_installed_package_outside_torch_is_built(tmp_path, inline_worker):
    net = "import yaml\n" + NET.replace(
        "        x = x.view(-1, 10)", "        assert yaml.safe_load('1') == 1\n        x = x.view(-1, 10)"
    )
    plots = "import matplotlib.pyplot as plt\ndef plot_cm(cm, cmap=plt.cm.Blues):\n    return cmap\n"
    g = grade(write_notebook(tmp_path / "pkg.ipynb", [code(plots), *course_cells(net=net)]))
    assert g.verdict == "PASS", g.format()


def test_a_missing_package_is_a_reason_only_when_the_model_needs_it(tmp_path, inline_worker):
    unused = "import toolz_is_not_installed\n"
    g = grade(write_notebook(tmp_path / "unused.ipynb", [code(unused), *course_cells()]))
    assert g.verdict == "PASS", g.format()
    net = "import toolz_is_not_installed as tz\n" + NET.replace(
        "        x = x.view(-1, 10)", "        x = tz.identity(x).view(-1, 10)"
    )
    g = grade(write_notebook(tmp_path / "needed.ipynb", course_cells(net=net, params=params_of(NET))))
    assert (
        g.verdict == "UNVERIFIABLE"
        and "'tz', imported in cell 2, line 1 from a package that is not installed" in g.format()
    )


def test_a_model_in_a_file_beside_the_notebook_is_built_from_it(tmp_path):
    """In the real sandbox: the notebook's folder's .py files are what its code may import."""
    (tmp_path / "model.py").write_text(IMPORTS.replace("from torchsummary import summary\n", "") + NET)
    (tmp_path / "secrets.txt").write_text("not for the model")
    cells = [code(IMPORTS), code("from model import Net"), code(SUMMARY_CELL, summary_output(params_of(NET))),
             code(TRAIN_TEST_CELL), code("EPOCHS = 15"), code(LOOP_CELL, course_log(PASSING))]  # fmt: skip
    g = grade(write_notebook(tmp_path / "imports.ipynb", cells))
    assert g.verdict == "PASS" and g.params == params_of(NET), g.format()


def test_a_linear_in_the_notebooks_own_summary_fails_when_the_model_cannot_be_built(tmp_path, inline_worker):
    table = "        Linear-12                   [-1, 10]             170\nTotal params: 187,146\n"
    cells = [code(IMPORTS), code("from mymodels import Net"),
             code("model = Net().to(device)\nsummary(model, input_size=(1, 28, 28))", [stream(table)]),
             code(TRAIN_TEST_CELL),
             code(LOOP_CELL.replace("model = Net().to(device)\n", ""), course_log(PASSING))]  # fmt: skip
    g = grade(write_notebook(tmp_path / "fc.ipynb", cells))
    assert g.verdict == "FAIL" and result(g, "no fully connected") == "FAIL", g.format()
    assert "Linear-12" in g.format() and result(g, "parameters") == "FAIL"


def test_a_log_over_the_training_set_is_not_a_test_log(tmp_path, inline_worker):
    g = grade(write_notebook(tmp_path / "trainset.ipynb", course_cells(total=60000)))
    assert g.verdict == "FAIL" and result(g, "test accuracy") == "FAIL", g.format()
    assert "counts 60000 images" in g.format() and "training set" in g.format()


def test_an_unused_linear_is_not_a_fully_connected_layer(tmp_path, inline_worker):
    net = NET.replace(
        "        self.gap = nn.AdaptiveAvgPool2d(1)",
        "        self.gap = nn.AdaptiveAvgPool2d(1)\n        self.fc = nn.Linear(16, 10)",
    )
    g = grade(write_notebook(tmp_path / "unused.ipynb", course_cells(net=net)))
    assert result(g, "no fully connected") == "PASS" and g.verdict == "PASS", g.format()
    assert "never called" in g.format() and "fc" in g.format() and g.params == params_of(NET)


NON_LOCAL = """\
class Net(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.theta, self.phi, self.g = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c // 2, 1)
        self.out, self.head = nn.Conv2d(c // 2, c, 1), nn.Conv2d(c, 10, 1)

    def forward(self, x):
        x = self.stem(x)
        n, c, h, w = x.shape
        attention = torch.softmax(torch.bmm(self.theta(x).flatten(2).transpose(1, 2), self.phi(x).flatten(2)), -1)
        y = torch.bmm(attention, self.g(x).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, c // 2, h, w)
        x = x + self.out(y)
        folded = F.fold(F.unfold(x, 2, stride=2), (h, w), 2, stride=2)
        index = torch.arange(h * w - 1, -1, -1).expand(n, c, -1)
        x = torch.gather(folded.flatten(2), 2, index).view(n, c, h, w)
        return F.log_softmax(self.head(x).mean((2, 3)), dim=1)
"""


def test_attention_over_positions_fold_and_gather_are_no_fc(tmp_path, inline_worker):
    g = grade(write_notebook(tmp_path / "nonlocal.ipynb", course_cells(net=NON_LOCAL)))
    assert result(g, "no fully connected") == "PASS" and g.has_linear is False, g.format()


def test_honest_styles_raise_no_flag(tmp_path, inline_worker):
    """Print code in an imported file, a '{} set' format string, Colab's null execution counts."""
    imported = [code(IMPORTS), code(NET), code("from utils import train, test"), code("EPOCHS = 15"),
                code(LOOP_CELL, course_log(PASSING))]  # fmt: skip
    g = grade(write_notebook(tmp_path / "imported.ipynb", imported))
    assert not g.flags and g.verdict == "PASS", g.format()
    templated = TRAIN_TEST_CELL.replace("'\\nTest set: Average", "'\\n{} set: Average").replace(
        ".format(", ".format('Test', "
    )
    cells = course_cells()
    cells[3] = code(templated)
    for cell in cells:
        cell["execution_count"] = None
    path = tmp_path / "colab.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {"colab": {}}, "nbformat": 4, "nbformat_minor": 0}))
    g = grade(path)
    assert not g.flags and g.verdict == "PASS", g.format()


def test_a_file_name_claim_above_the_best_epoch_is_flagged(tmp_path, inline_worker):
    accs = [a - 0.4 for a in PASSING]  # best 99.05
    g = grade(write_notebook(tmp_path / "S5_99.4.ipynb", course_cells(accs=accs)))
    assert any(f.startswith("the file name claims 99.4%") for f in g.flags), g.flags
    g = grade(write_notebook(tmp_path / "S5_99.4.ipynb", course_cells()))
    assert not g.flags, g.flags


def test_a_model_trained_on_from_an_earlier_run_is_flagged(tmp_path, inline_worker):
    resumed = LOOP_CELL.replace("model = Net().to(device)", "# model = Net().to(device)")
    cells = [code(IMPORTS), code(NET), code(TRAIN_TEST_CELL), code("EPOCHS = 15"),
             code(resumed, course_log([99.35, *PASSING[1:]]))]  # fmt: skip
    g = grade(write_notebook(tmp_path / "resumed.ipynb", cells))
    flag = next((f for f in g.flags if "built by no code before it" in f), "")
    assert "cell 5, line 1" in flag and "99.35%" in flag, g.flags
    assert not grade(write_notebook(tmp_path / "fresh.ipynb", course_cells())).flags


def test_several_training_loops_are_several_runs_but_evaluations_are_not(tmp_path, inline_worker):
    cells = [*course_cells(accs=[99.5] * 15), code(LOOP_CELL, course_log(PASSING))]
    g = grade(write_notebook(tmp_path / "two.ipynb", cells))
    assert any("2 training runs logged (cells [6, 7])" in f for f in g.flags)
    assert any("an earlier run (cell 6) did better" in f for f in g.flags)


# --- batch grading ------------------------------------------------------------------------------------------------


def test_a_forgotten_csv_name_overwrites_nothing(tmp_path, inline_worker):
    first = course_notebook(tmp_path / "a.ipynb")
    second = course_notebook(tmp_path / "b.ipynb")
    before = first.read_bytes()
    code_, out, err = call(kit, "check-notebook", "--csv", str(first), str(second))
    assert code_ == 2 and "is a notebook" in err and out == "" and first.read_bytes() == before
    (tmp_path / "notes.txt").write_text("mine")
    code_, _, err = call(kit, "check-notebook", str(first), "--csv", str(tmp_path / "notes.txt"))
    assert code_ == 2 and "not a .csv file" in err and (tmp_path / "notes.txt").read_text() == "mine"
    code_, out, err = call(kit, "check-notebook", str(first), "--csv", str(tmp_path))
    assert code_ == 2 and "is a folder" in err and out == ""


def test_bad_notebooks_are_error_rows_and_the_rest_are_graded(tmp_path, inline_worker):
    good = course_notebook(tmp_path / "good.ipynb")
    odd = json.loads(good.read_text())
    odd["cells"][3]["outputs"] = [{"output_type": "execute_result", "data": ["not", "a", "dict"]}]
    odd["cells"][1]["source"] = "import torch\n# \ud800 a lone surrogate\n" + odd["cells"][1]["source"]
    (tmp_path / "odd.ipynb").write_text(json.dumps(odd))
    (tmp_path / "deep.ipynb").write_text("[" * 100_000 + "]" * 100_000)
    table = tmp_path / "grades.csv"
    targets = [str(tmp_path / n) for n in ("deep.ipynb", "odd.ipynb", "good.ipynb")]
    code_, out, err = call(kit, "check-notebook", *targets, "--csv", str(table))
    rows = list(csv.DictReader(table.open()))
    assert [r["verdict"] for r in rows] == ["ERROR", "PASS", "PASS"], out
    assert code_ == 2 and err.count("error:") == 1 and "deep.ipynb" in err and "nested too deeply" in err


def test_log_parsing_is_linear_in_a_long_line():
    from mnist_challenge.grading.ipynb import Cell, Notebook

    line = "Test set: Average loss: 0.1, " * 40_000  # 1.2 MB, "test" everywhere, never an accuracy
    notebook = Notebook(Path("long.ipynb"), [Cell(1, "code", "train()", 1, [line + "\n"])])
    start = time.perf_counter()
    log = read_epoch_log(notebook, read_structure(notebook))
    assert time.perf_counter() - start < 1.0 and not log.runs


# --- containment (the real sandbox) -----------------------------------------------------------------------------


HOSTILE = {
    "forge": "import json\nclass Forger(nn.Module):\n"
    '    json.dumps = lambda *a, **k: \'{"report": {"params": 4986}}\'\n'
    "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(784, 2000)\n"
    "    def forward(self, x):\n        return self.fc(x.flatten(1))\n",
    "environment": "import os\nclass Leak(nn.Module):\n    token = os.environ.get('SECRET_TOKEN', 'absent')\n"
    "    def __init__(self):\n        super().__init__()\n        raise RuntimeError('token is ' + self.token)\n",
    "write": "class Writer(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        open(OUTSIDE, 'w').write('owned')\n",
    "network": "import socket\nclass Net2(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        socket.create_connection(('127.0.0.1', PORT), timeout=2)\n",
    "linger": "import subprocess\nclass Sleeper(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        subprocess.Popen(['sleep', '77'])\n        self.conv = nn.Conv2d(1, 10, 28)\n"
    "    def forward(self, x):\n        return self.conv(x).flatten(1)\n",
    "memory": "class Hog(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.big = bytearray(10 << 30)\n",
}


def _hostile_notebooks(tmp_path: Path, port: int) -> dict[str, Path]:
    outside = tmp_path / "outside.txt"
    paths = {}
    for name, body in HOSTILE.items():
        source = body.replace("OUTSIDE", repr(str(outside))).replace("PORT", str(port))
        model = "model = Net2()" if name == "network" else f"model = {source.split('class ')[1].split('(')[0]}()"
        cells = [code(IMPORTS), code(source), code(model)]
        paths[name] = write_notebook(tmp_path / f"{name}.ipynb", cells)
    return paths


@bubblewrap
def test_hostile_notebooks_get_a_clear_reason_and_change_nothing(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    paths = _hostile_notebooks(tmp_path, port)
    env = {**os.environ, "SECRET_TOKEN": "s3cr3t-value"}
    start = time.monotonic()
    command = [sys.executable, "-m", "mnist_challenge", "check-notebook", *map(str, paths.values()), "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    elapsed = time.monotonic() - start
    listener.settimeout(0.1)
    with pytest.raises(OSError):
        listener.accept()  # nobody connected
    listener.close()
    assert "s3cr3t-value" not in done.stdout + done.stderr
    graded = {Path(g["notebook"]).stem: g for g in json.loads(done.stdout)}
    assert all(g["verdict"] != "PASS" for g in graded.values())
    why = {name: json.dumps(g["rules"][0]["figure"]) for name, g in graded.items()}
    assert "json.dumps" in why["forge"] and any("json.dumps" in f for f in graded["forge"]["flags"])
    assert "token is absent" in why["environment"]
    assert not (tmp_path / "outside.txt").exists()
    assert "Read-only file system" in why["write"] or "No such file" in why["write"]
    assert "Connection refused" in why["network"] or "unreachable" in why["network"]  # its own empty network
    assert graded["linger"]["params"] == 7850 and elapsed < 120  # the sleeper did not hold the grader
    assert "memory" in why["memory"].lower()
    assert subprocess.run(["pgrep", "-f", "sleep 77"], capture_output=True).returncode == 1  # nothing left behind


def test_sighup_stops_a_batch_and_leaves_nothing_behind(tmp_path):
    hanging = NET.replace(
        "        super(Net, self).__init__()", "        super(Net, self).__init__()\n        while True: pass"
    )
    path = write_notebook(tmp_path / "hang.ipynb", [code(IMPORTS), code(hanging), code("model = Net()")])
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_challenge", "check-notebook", str(path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("kit-sandbox-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    process.send_signal(signal.SIGHUP)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == "interrupted", err
    assert not list(tmp_path.glob("kit-*")), list(tmp_path.iterdir())
    assert subprocess.run(["pgrep", "-f", "grading.worker"], capture_output=True).returncode == 1


def test_without_bubblewrap_the_limits_environment_and_process_group_still_hold(tmp_path):
    paths = _hostile_notebooks(tmp_path, 1)
    chosen = [str(paths[name]) for name in ("forge", "environment", "linger")]
    env = {**os.environ, "SECRET_TOKEN": "s3cr3t-value", "MNIST_CHALLENGE_SANDBOX": "none"}
    command = [sys.executable, "-m", "mnist_challenge", "check-notebook", *chosen, "--json"]
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "s3cr3t-value" not in done.stdout + done.stderr and time.monotonic() - start < 100
    graded = {Path(g["notebook"]).stem: g for g in json.loads(done.stdout)}
    assert graded["forge"]["params"] is None and graded["forge"]["flags"]
    assert "token is absent" in graded["environment"]["rules"][0]["figure"]
    assert graded["linger"]["params"] == 7850 and graded["linger"]["containment"] == "limits only"
    assert subprocess.run(["pgrep", "-f", "sleep 77"], capture_output=True).returncode == 1
