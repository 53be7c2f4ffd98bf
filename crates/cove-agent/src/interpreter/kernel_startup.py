# Run by Cove's agent in every IPython kernel it starts, once, before any user code (as a
# silent execution: it neither counts as an execution nor leaves names in the user's
# namespace). It teaches IPython one more display format, `e2b/chart`: the data behind a
# matplotlib figure, in the shape E2B's code interpreter gives it (`Result.chart` in the
# `e2b_code_interpreter` SDKs: line, scatter, bar, pie, box_and_whisker, superchart).
#
# matplotlib is imported only once the user has: a kernel that never plots pays nothing.

import datetime
import math
import re
import sys

from IPython import get_ipython
from IPython.core.formatters import BaseFormatter
from traitlets import ObjectName, Unicode

# "Time (s)" and "Amplitude [Hz]" carry their units in brackets.
_UNIT = re.compile(r"\s\((.*?)\)|\[(.*?)\]")


def _rounded(value):
    """A float without the noise of the arithmetic (and float32 paths) behind it: eight
    significant digits, fewer for larger numbers (a pie's 323.9999914 degrees are 324)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    digits = max(1, 8 - math.floor(math.log10(abs(value))))
    return float(f"{value:.{digits}g}")


def _scalar(value):
    """A point coordinate as JSON can carry it: dates as ISO text, numbers as floats."""
    import numpy

    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, numpy.datetime64):
        return str(value.astype("datetime64[s]"))
    if isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def _text(value):
    return value or None


def _converter(axis):
    getter = getattr(axis, "get_converter", None)
    return getter() if getter else getattr(axis, "converter", None)


def _is_date_axis(axis):
    from matplotlib import dates

    kinds = tuple(
        kind
        for kind in (
            getattr(dates, "_SwitchableDateConverter", None),
            getattr(dates, "DateConverter", None),
            getattr(dates, "ConciseDateConverter", None),
        )
        if kind is not None
    )
    return bool(kinds) and isinstance(_converter(axis), kinds)


def _is_straight_segment(line):
    """A two-point line along an axis: a grid or reference line, not data."""
    xs, ys = line.get_xdata(), line.get_ydata()
    if len(xs) != 2 or len(ys) != 2:
        return False
    return bool(xs[0] == xs[1] or ys[0] == ys[1])


def _labels(ax):
    """Title, axis labels and the units in them."""
    x_label, y_label = _text(ax.get_xlabel()), _text(ax.get_ylabel())

    def unit(label):
        match = _UNIT.search(label) if label else None
        return (match.group(1) or match.group(2)) if match else None

    return {
        "title": _text(ax.get_title()),
        "x_label": x_label,
        "y_label": y_label,
        "x_unit": unit(x_label),
        "y_unit": unit(y_label),
    }


def _swap_axes(chart):
    """Bars or boxes laid along the y axis: their labels are the y axis's."""
    chart["x_label"], chart["y_label"] = chart["y_label"], chart["x_label"]
    chart["x_unit"], chart["y_unit"] = chart["y_unit"], chart["x_unit"]


def _scale(axis, scale, ticks, labels):
    if _is_date_axis(axis):
        return "datetime"
    if scale != "linear":
        return scale
    # Categories sit at 0, 1, 2, … and are labelled with their names, not those numbers.
    categorical = bool(ticks) and all(
        isinstance(tick, float) and tick == index and label != str(index)
        for index, (tick, label) in enumerate(zip(ticks, labels))
    )
    return "categorical" if categorical else "linear"


def _ticks(axis, values):
    if _is_date_axis(axis):
        from matplotlib import dates

        return [dates.num2date(value).isoformat() for value in values]
    return [_scalar(value) for value in values]


def _point_chart(ax, kind):
    chart = {"type": kind, **_labels(ax)}
    for name, axis, scale in (
        ("x", ax.xaxis, ax.get_xscale()),
        ("y", ax.yaxis, ax.get_yscale()),
    ):
        ticks = _ticks(axis, axis.get_ticklocs())
        labels = [label.get_text() for label in axis.get_ticklabels()]
        chart[f"{name}_ticks"] = ticks
        chart[f"{name}_tick_labels"] = labels
        chart[f"{name}_scale"] = _scale(axis, scale, ticks, labels)
    return chart


def _line_chart(ax):
    chart = _point_chart(ax, "line")
    elements = []
    for line in ax.get_lines():
        if _is_straight_segment(line):
            continue
        label = line.get_label()
        if label.startswith("_child") and label[6:].isdigit():
            label = f"Line {int(label[6:])}"
        points = [
            [_scalar(x), _scalar(y)] for x, y in zip(line.get_xdata(), line.get_ydata())
        ]
        elements.append({"label": label, "points": points})
    chart["elements"] = elements
    return chart


def _scatter_chart(ax):
    chart = _point_chart(ax, "scatter")
    chart["elements"] = [
        {
            "label": collection.get_label(),
            "points": [[_scalar(x), _scalar(y)] for x, y in collection.get_offsets()],
        }
        for collection in ax.collections
    ]
    return chart


def _tick_label_at(axis, position, half_width):
    """The tick label of the tick under a bar's middle, else the position itself."""
    for tick, label in zip(axis.get_ticklocs(), axis.get_ticklabels()):
        if abs(tick - position) <= half_width and label.get_text():
            return label.get_text()
    return f"{_rounded(position):g}"


def _bar_chart(ax):
    chart = {"type": "bar", **_labels(ax)}
    elements = []
    horizontal = False
    for container in ax.containers:
        bars = [bar for bar in container if hasattr(bar, "get_height")]
        if not bars:
            continue
        group = container.get_label() or ""
        if group.startswith("_container") and group[10:].isdigit():
            group = f"Group {int(group[10:])}"
        orientation = getattr(container, "orientation", None)
        if orientation is None:
            # Bars along the y axis (barh) all have the same height.
            heights = [bar.get_height() for bar in bars]
            orientation = "horizontal" if len(set(heights)) == 1 and len(bars) > 1 else "vertical"
        horizontal = orientation == "horizontal"
        for bar in bars:
            if horizontal:
                middle, half, value = bar.get_y() + bar.get_height() / 2, bar.get_height() / 2, bar.get_width()
                label = _tick_label_at(ax.yaxis, middle, half)
            else:
                middle, half, value = bar.get_x() + bar.get_width() / 2, bar.get_width() / 2, bar.get_height()
                label = _tick_label_at(ax.xaxis, middle, half)
            elements.append({"label": label, "group": group, "value": _rounded(value)})
    if horizontal:
        _swap_axes(chart)
    chart["elements"] = elements
    return chart


def _pie_chart(ax):
    from matplotlib.patches import Wedge

    return {
        "type": "pie",
        "title": _text(ax.get_title()),
        "elements": [
            {
                "label": wedge.get_label(),
                "angle": _rounded(abs(wedge.theta2 - wedge.theta1)),
                "radius": _rounded(wedge.r),
            }
            for wedge in ax.patches
            if isinstance(wedge, Wedge)
        ],
    }


def _box_and_whisker_chart(ax):
    """Boxes (`patch_artist=True`), their whiskers, medians and fliers, read back from the
    artists `boxplot` drew."""
    from matplotlib.patches import PathPatch

    chart = {"type": "box_and_whisker", **_labels(ax)}
    boxes = []
    for patch in ax.patches:
        if not isinstance(patch, PathPatch):
            continue
        vertices = patch.get_path().vertices
        boxes.append(
            {
                "x0": float(vertices[:, 0].min()),
                "x1": float(vertices[:, 0].max()),
                "y0": float(vertices[:, 1].min()),
                "y1": float(vertices[:, 1].max()),
            }
        )
    # Boxes along the y axis (vert=False) all have the same height.
    horizontal = len(boxes) > 1 and len({round(b["y1"] - b["y0"], 9) for b in boxes}) == 1
    if horizontal:
        for box in boxes:
            box["x0"], box["y0"], box["x1"], box["y1"] = box["y0"], box["x0"], box["y1"], box["x1"]
        _swap_axes(chart)
    for box in boxes:
        box.update(q1=box["y0"], q3=box["y1"], low=box["y0"], high=box["y1"], median=None, outliers=[])

    def box_at(position):
        for box in boxes:
            if box["x0"] - 1e-9 <= position <= box["x1"] + 1e-9:
                return box
        return None

    for line in ax.get_lines():
        xs = [float(v) for v in line.get_xdata()]
        ys = [float(v) for v in line.get_ydata()]
        if horizontal:
            xs, ys = ys, xs
        if not xs:
            continue
        if line.get_linestyle() in ("None", "none", "", " "):
            # Fliers: markers only, one point per outlier.
            for x, y in zip(xs, ys):
                box = box_at(x)
                if box is not None:
                    box["outliers"].append(_rounded(y))
            continue
        if len(xs) != 2:
            continue
        box = box_at((xs[0] + xs[1]) / 2)
        if box is None:
            continue
        if ys[0] == ys[1]:
            if box["y0"] <= ys[0] <= box["y1"] and xs[0] != xs[1]:
                if box["median"] is None or abs(xs[1] - xs[0]) >= box["x1"] - box["x0"] - 1e-9:
                    box["median"] = ys[0]
            continue
        if xs[0] == xs[1]:  # a whisker, from the box to the last point within reach
            low, high = min(ys), max(ys)
            if high <= box["y0"] + 1e-9:
                box["low"] = low
            elif low >= box["y1"] - 1e-9:
                box["high"] = high
    ticks = list(zip(ax.xaxis.get_ticklocs(), ax.xaxis.get_ticklabels()))
    if horizontal:
        ticks = list(zip(ax.yaxis.get_ticklocs(), ax.yaxis.get_ticklabels()))
    elements = []
    for box in sorted(boxes, key=lambda b: b["x0"]):
        middle = (box["x0"] + box["x1"]) / 2
        label = next(
            (text.get_text() for tick, text in ticks if box["x0"] <= tick <= box["x1"]),
            f"{_rounded(middle):g}",
        )
        median = box["median"] if box["median"] is not None else (box["q1"] + box["q3"]) / 2
        elements.append(
            {
                "label": label,
                "min": _rounded(box["low"]),
                "first_quartile": _rounded(box["q1"]),
                "median": _rounded(median),
                "third_quartile": _rounded(box["q3"]),
                "max": _rounded(box["high"]),
                "outliers": box["outliers"],
            }
        )
    chart["elements"] = elements
    return chart


def _kind_of(ax):
    """What an axes shows, from the artists on it (text aside)."""
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import PathPatch, Rectangle, Wedge
    from matplotlib.text import Text

    children = getattr(ax, "_children", None)
    if children is None:
        children = [*ax.lines, *ax.patches, *ax.collections]
    artists = [child for child in children if not isinstance(child, Text)]
    if all(isinstance(artist, Line2D) for artist in artists):
        return "line"
    if all(isinstance(artist, (PathPatch, Line2D)) for artist in artists):
        return "box_and_whisker"
    artists = [a for a in artists if not (isinstance(a, Line2D) and _is_straight_segment(a))]
    if all(isinstance(artist, PathCollection) for artist in artists):
        return "scatter"
    if all(isinstance(artist, Wedge) for artist in artists):
        return "pie"
    if all(isinstance(artist, Rectangle) for artist in artists):
        return "bar"
    return "unknown"


_CHARTS = {
    "line": _line_chart,
    "scatter": _scatter_chart,
    "bar": _bar_chart,
    "pie": _pie_chart,
    "box_and_whisker": _box_and_whisker_chart,
}


def _axes_chart(ax):
    kind = _kind_of(ax)
    read = _CHARTS.get(kind)
    if read is None:
        return {"type": "unknown", "title": _text(ax.get_title()), "elements": []}
    return read(ax)


def figure_chart(figure):
    """The chart behind a figure: None for a blank one, a superchart for several axes."""
    axes = figure.get_axes()
    if not any(ax.has_data() for ax in axes):
        return None
    if len(axes) == 1:
        return _axes_chart(axes[0])
    suptitle = getattr(figure, "_suptitle", None)
    return {
        "type": "superchart",
        "title": _text(suptitle.get_text()) if suptitle is not None else None,
        "elements": [_axes_chart(ax) for ax in axes],
    }


class ChartFormatter(BaseFormatter):
    """`e2b/chart` for matplotlib figures; other objects may offer `_repr_e2b_chart_`."""

    format_type = Unicode("e2b/chart")
    print_method = ObjectName("_repr_e2b_chart_")
    _return_type = (dict, str)

    def __call__(self, obj):
        if "matplotlib" in sys.modules:
            from matplotlib.figure import Figure

            if isinstance(obj, Figure):
                try:
                    return figure_chart(obj)
                except Exception:  # noqa: BLE001 - a chart is a bonus; the image still shows
                    return None
        return super().__call__(obj)


def install():
    shell = get_ipython()
    if shell is None:
        return
    formatters = shell.display_formatter.formatters
    if "e2b/chart" not in formatters:
        formatters["e2b/chart"] = ChartFormatter(parent=shell.display_formatter)


install()
