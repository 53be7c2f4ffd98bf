"""Charts as E2B's code interpreter extracts them: `e2b-code-interpreter` 2.11.5 against a real
`cove serve` reads `result.chart` (the `e2b/chart` display format the agent's kernels add)
as the SDK's own chart classes, with the data behind each matplotlib figure: lines and their
points, bars and their values, scatter points, pie wedges, boxes and whiskers, and several
charts in one figure. The figure's PNG comes along, as before.
"""

import datetime

import pytest
from e2b_code_interpreter import Sandbox
from e2b_code_interpreter.charts import (
    BarChart,
    BoxAndWhiskerChart,
    ChartType,
    LineChart,
    PieChart,
    ScatterChart,
    SuperChart,
)

pytestmark = pytest.mark.cove_server


@pytest.fixture
def sbx():
    with Sandbox.create() as sandbox:
        yield sandbox


def only_chart(execution):
    assert execution.error is None, execution.error
    charts = [r for r in execution.results if r.chart is not None]
    assert len(charts) == 1, execution.results
    assert charts[0].png, "the figure's image comes with its chart"
    return charts[0].chart


def test_a_line_chart_has_its_lines_points_labels_and_a_date_axis(sbx):
    chart = only_chart(sbx.run_code("""
import datetime
import numpy as np
import matplotlib.pyplot as plt

dates = [datetime.date(2023, 9, 1) + datetime.timedelta(days=i) for i in range(50)]
x = np.linspace(0, 2 * np.pi, 50)
plt.figure(figsize=(8, 5))
plt.plot(dates, np.sin(x), label='sin(x)')
plt.plot(dates, np.cos(x), label='cos(x)')
plt.xlabel('Time (s)')
plt.ylabel('Amplitude [Hz]')
plt.title('Plot of sin(x) and cos(x)')
plt.show()
"""))
    assert isinstance(chart, LineChart)
    assert chart.type == ChartType.LINE
    assert chart.title == "Plot of sin(x) and cos(x)"
    assert (chart.x_label, chart.y_label) == ("Time (s)", "Amplitude [Hz]")
    assert (chart.x_unit, chart.y_unit) == ("s", "Hz")
    assert (chart.x_scale, chart.y_scale) == ("datetime", "linear")
    assert all(isinstance(datetime.datetime.fromisoformat(t), datetime.datetime) for t in chart.x_ticks)
    assert all(isinstance(t, float) for t in chart.y_ticks)
    assert all(isinstance(t, str) for t in chart.y_tick_labels)
    assert [line.label for line in chart.elements] == ["sin(x)", "cos(x)"]
    sine = chart.elements[0]
    assert len(sine.points) == 50
    assert sine.points[0] == ("2023-09-01", 0.0)
    assert all(isinstance(x, str) and isinstance(y, float) for x, y in sine.points)
    assert chart.elements[1].points[0][1] == 1.0


def test_a_bar_chart_has_a_value_per_label_in_its_group(sbx):
    chart = only_chart(sbx.run_code("""
import matplotlib.pyplot as plt

plt.figure()
plt.bar(['Author A', 'Author B', 'Author C', 'Author D'], [100, 200, 300, 400], label='Books Sold')
plt.xlabel('Authors')
plt.ylabel('Number of Books Sold')
plt.title('Book Sales by Authors')
plt.show()
"""))
    assert isinstance(chart, BarChart)
    assert chart.type == ChartType.BAR
    assert chart.title == "Book Sales by Authors"
    assert (chart.x_label, chart.y_label) == ("Authors", "Number of Books Sold")
    assert (chart.x_unit, chart.y_unit) == (None, None)
    assert [bar.label for bar in chart.elements] == ["Author A", "Author B", "Author C", "Author D"]
    assert [bar.value for bar in chart.elements] == [100, 200, 300, 400]
    assert [bar.group for bar in chart.elements] == ["Books Sold"] * 4


def test_horizontal_bars_swap_the_axes(sbx):
    chart = only_chart(sbx.run_code("""
import matplotlib.pyplot as plt

plt.figure()
plt.barh(['north', 'south'], [7, 3])
plt.xlabel('Sales (units)')
plt.ylabel('Region')
plt.show()
"""))
    assert isinstance(chart, BarChart)
    # The categories run along the y axis: they are the chart's x.
    assert (chart.x_label, chart.y_label) == ("Region", "Sales (units)")
    assert chart.y_unit == "units"
    assert [(bar.label, bar.value) for bar in chart.elements] == [("north", 7), ("south", 3)]


def test_a_scatter_chart_has_each_datasets_points(sbx):
    chart = only_chart(sbx.run_code("""
import matplotlib.pyplot as plt

plt.figure()
plt.scatter([1, 2, 3, 4, 5], [5, 3, 4, 1, 2], label='Dataset 1')
plt.scatter([0.5, 1.5], [2.5, 3.5], label='Dataset 2')
plt.xlabel('A')
plt.ylabel('B')
plt.show()
"""))
    assert isinstance(chart, ScatterChart)
    assert chart.type == ChartType.SCATTER
    assert chart.title is None
    assert (chart.x_label, chart.y_label) == ("A", "B")
    assert (chart.x_scale, chart.y_scale) == ("linear", "linear")
    assert all(isinstance(t, float) for t in chart.x_ticks + chart.y_ticks)
    assert [d.label for d in chart.elements] == ["Dataset 1", "Dataset 2"]
    assert chart.elements[0].points == [(1, 5), (2, 3), (3, 4), (4, 1), (5, 2)]
    assert chart.elements[1].points == [(0.5, 2.5), (1.5, 3.5)]


def test_a_pie_chart_has_each_wedges_angle(sbx):
    chart = only_chart(sbx.run_code("""
import matplotlib.pyplot as plt

fig, ax = plt.subplots()
ax.pie([90, 10], labels=['No', 'No, in blue'], autopct='%1.1f%%', startangle=90)
ax.axis('equal')
plt.title('Will I wake up early tomorrow?')
plt.show()
"""))
    assert isinstance(chart, PieChart)
    assert chart.type == ChartType.PIE
    assert chart.title == "Will I wake up early tomorrow?"
    assert [(w.label, w.angle, w.radius) for w in chart.elements] == [
        ("No", 324, 1),
        ("No, in blue", 36, 1),
    ]


def test_a_box_and_whisker_chart_has_each_boxs_quartiles_and_outliers(sbx):
    chart = only_chart(sbx.run_code("""
import matplotlib.pyplot as plt

data = {'Class A': [85, 90, 78, 92, 88], 'Class B': [95, 89, 76, 91, 84, 87],
        'Class C': [75, 82, 88, 79, 86]}
fig, ax = plt.subplots()
ax.set_title('Exam Scores Distribution')
ax.set_xlabel('Class')
ax.set_ylabel('Score')
ax.boxplot(list(data.values()), labels=list(data.keys()), patch_artist=True)
plt.show()
"""))
    assert isinstance(chart, BoxAndWhiskerChart)
    assert chart.type == ChartType.BOX_AND_WHISKER
    assert chart.title == "Exam Scores Distribution"
    assert (chart.x_label, chart.y_label) == ("Class", "Score")
    boxes = chart.elements
    assert [b.label for b in boxes] == ["Class A", "Class B", "Class C"]
    assert [b.min for b in boxes] == [78, 84, 75]
    assert [b.first_quartile for b in boxes] == [85, 84.75, 79]
    assert [b.median for b in boxes] == [88, 88, 82]
    assert [b.third_quartile for b in boxes] == [90, 90.5, 86]
    assert [b.max for b in boxes] == [92, 95, 88]
    assert [b.outliers for b in boxes] == [[], [76], []]


def test_a_figure_with_several_axes_is_a_superchart(sbx):
    chart = only_chart(sbx.run_code("""
import numpy as np
import matplotlib.pyplot as plt

fig, axs = plt.subplots(1, 2)
fig.suptitle('Multiple Charts Example')
x = np.linspace(0, 10, 100)
axs[0].plot(x, np.sin(x), 'r')
axs[0].set_title('Sine Wave')
axs[0].grid(True)
axs[1].scatter([1, 2, 3], [3, 1, 2], label='Dataset 1')
axs[1].set_xlabel('X')
axs[1].set_ylabel('Y')
axs[1].set_title('Scatter Plot')
plt.show()
"""))
    assert isinstance(chart, SuperChart)
    assert chart.type == ChartType.SUPERCHART
    assert chart.title == "Multiple Charts Example"
    line, scatter = chart.elements
    assert isinstance(line, LineChart) and line.title == "Sine Wave"
    assert len(line.elements) == 1 and len(line.elements[0].points) == 100
    assert isinstance(scatter, ScatterChart) and scatter.title == "Scatter Plot"
    assert (scatter.x_label, scatter.y_label) == ("X", "Y")
    assert len(scatter.elements[0].points) == 3


def test_what_is_not_a_figure_has_no_chart_and_blank_figures_none(sbx):
    execution = sbx.run_code("""
import matplotlib.pyplot as plt
plt.figure()
plt.show()
21 * 2
""")
    assert execution.error is None
    assert execution.text == "42"
    assert all(result.chart is None for result in execution.results)
    # The startup code that adds the format left no names behind.
    names = sbx.run_code("sorted(n for n in globals() if 'chart' in n.lower() or 'cove' in n.lower())")
    assert names.text == "[]"
