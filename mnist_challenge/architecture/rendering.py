"""The inspector's report as a reader sees it: the text table ``inspect`` prints (and a ``Report``'s repr), and the
same table as HTML for Jupyter and Colab."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnist_challenge.architecture.inspector import LayerRow, Report

COLUMNS = ("layer", "type", "output shape", "RF", "jump", "params", "MACs")


def _layer_cells(r: LayerRow) -> tuple[str, ...]:
    shape = "x".join(str(s) for s in r.out_shape)
    rf = "-" if r.rf is None else _axes_text(r.rf_axes) if r.rf_axes and len(set(r.rf_axes)) > 1 else f"{r.rf:g}"
    jump = "-" if r.jump is None else f"{r.jump:g}"
    return r.name, r.type, shape, rf, jump, f"{r.params:,}", f"{r.macs:,}"


def _totals(report: Report) -> list[tuple[str, str]]:
    """(label, value) of the lines under the table: parameters, MACs, RF, the FC verdict with its call site."""
    fc = (
        f"YES - breaks the no-FC rule: {', '.join(report.linear_layers) or 'F.linear'}"
        if report.has_linear
        else "none"
        + (f" (defined but never called: {', '.join(report.linear_unused)})" if report.linear_unused else "")
    )
    return [
        ("input size (C, H, W)", f"{tuple(report.input_size)}"),
        *([("RF reported for", f"{report.output_used} (--output picks another)")] if report.output_used else []),
        ("parameters used in forward", f"{report.params:,} (trainable {report.trainable_params:,})"),
        (
            "parameters never used",
            f"{report.params_unused:,}" + (f"  in {', '.join(report.unused_modules)}" if report.unused_modules else ""),
        ),
        ("MACs per image", f"{report.macs:,}"),
        ("RF at the head's input", f"{_head_text(report)}  (one unit of the last map before GAP/flatten)"),
        ("RF after GAP (model output)", f"{report.receptive_field}  (spans the whole head input map; padding counted)"),
        *(
            [("RF not tracked past", f"{report.rf_untracked_past}: the tracer cannot map that op's geometry")]
            if report.rf_untracked_past
            else []
        ),
        ("fully connected layer", fc),
    ]


def format_report(report: Report) -> str:
    """The human-readable table printed by ``inspect`` (and a ``Report``'s repr)."""
    header = f"{'layer':<32} {'type':<20} {'output shape':<18} {'RF':>6} {'jump':>5} {'params':>11} {'MACs':>13}"
    lines = [header, "-" * len(header)]
    for r in report.layers:
        name, kind, shape, rf, jump, params, macs = _layer_cells(r)
        lines.append(f"{name[:32]:<32} {kind[:20]:<20} {shape:<18} {rf:>6} {jump:>5} {params:>11} {macs:>13}")
    lines.append("-" * len(header))
    for label, value in _totals(report):
        if label == "RF not tracked past":
            lines.append(f"RF not tracked past {value}")
        else:
            lines.append(f"{label + ':':<31} {value}")
    return "\n".join(lines)


def report_html(report: Report) -> str:
    """The same table as HTML, for Jupyter and Colab (``Report._repr_html_``)."""
    from html import escape

    right = {"RF", "jump", "params", "MACs"}
    head = "".join(f"<th style='text-align:{'right' if c in right else 'left'}'>{c}</th>" for c in COLUMNS)
    rows = []
    for r in report.layers:
        cells = zip(COLUMNS, _layer_cells(r), strict=True)
        rows.append(
            "<tr>"
            + "".join(f"<td style='text-align:{'right' if c in right else 'left'}'>{escape(v)}</td>" for c, v in cells)
            + "</tr>"
        )
    totals = "".join(
        f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _totals(report)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table><table>{totals}</table>"


def _head_text(report: Report) -> str:
    axes = report.receptive_field_head_axes
    return _axes_text(axes) if axes and len(set(axes)) > 1 else str(report.receptive_field_head)


def _axes_text(axes: list[int | float]) -> str:
    """RFh x RFw, for a layer whose axes see different extents (a 2x4 pool, say)."""
    return "x".join(f"{a:g}" for a in axes)
