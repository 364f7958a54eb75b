"""The SVG line plots: well-formed, scaled into their box, gaps where data is missing, small whatever the input."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from gateway.webkit.plots import HEIGHT, MAX_COLUMNS, TOP, WIDTH, Line, columns, format_value, line_plot, nice_ceiling

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("viewBox") == f"0 0 {WIDTH} {HEIGHT}"
    return root


def segments(path_d: str) -> list[list[tuple[float, float]]]:
    """The runs of an SVG path `d` written as M x y L x y … (and `h` dashes), as point lists."""
    runs = []
    for part in filter(None, path_d.split("M")):
        if part.endswith("h2"):
            x, y = map(float, part[:-2].split())
            runs.append([(x, y), (x + 2, y)])
        else:
            runs.append([tuple(map(float, point.split())) for point in part.split("L")])  # type: ignore[misc]
    return runs


def data_paths(root: ET.Element) -> list[ET.Element]:
    return [p for p in root.iter(f"{SVG}path") if p.get("stroke-width") == "1.5"]


def test_a_line_is_scaled_into_the_box_with_its_highest_value_at_the_top() -> None:
    points = [(float(t), float(t % 50)) for t in range(0, 600, 10)]
    root = parse(line_plot("CPU", [Line("cpu", points)], start=0, end=600, step=10, unit="percent", y_max=100))
    [path] = data_paths(root)
    [run] = segments(path.get("d", ""))
    assert len(run) == 60
    ys = [y for _, y in run]
    assert all(TOP <= y <= HEIGHT for y in ys)
    assert max(ys) == HEIGHT - 16  # value 0 sits on the base line
    xs = [x for x, _ in run]
    assert xs == sorted(xs) and 0 < xs[0] < xs[-1] < WIDTH
    texts = "".join(root.itertext())
    assert "CPU" in texts and "100 %" in texts and "cpu 40 %" in texts and "-10 min" in texts


def test_missing_values_and_empty_stretches_break_the_line() -> None:
    points: list[tuple[float, float | None]] = [(t, 5.0) for t in range(0, 300, 60)]
    points += [(300, None)] + [(t, 7.0) for t in range(1200, 3600, 60)]  # off between 300 s and 1200 s
    root = parse(line_plot("Memory", [Line("used", points)], start=0, end=3600, step=60, unit="percent"))
    [path] = data_paths(root)
    runs = segments(path.get("d", ""))
    assert len(runs) == 2 and len(runs[0]) == 5 and len(runs[1]) == 40
    assert runs[0][-1][0] < runs[1][0][0]


def test_a_day_of_minutes_is_reduced_to_a_column_per_pixel_pair_keeping_peaks() -> None:
    points = [(float(t), 1.0) for t in range(0, 86400, 60)]
    points[700] = (points[700][0], 2048.0)  # one busy minute
    svg = line_plot("Network", [Line("rx", points), Line("tx", points, "#d9480f")], start=0, end=86400, step=60,
                    unit="bytes_per_s")
    root = parse(svg)
    paths = data_paths(root)
    assert len(paths) == 2
    run = segments(paths[0].get("d", ""))[0]
    assert len(run) == MAX_COLUMNS
    assert min(y for _, y in run) == TOP  # the peak survives the reduction and sets the scale
    assert "2.0 KiB" in "".join(root.itertext())
    assert len(svg) < 6000, len(svg)


def test_titles_are_escaped_and_an_empty_plot_is_still_a_plot() -> None:
    root = parse(line_plot("<Disk & I/O>", [Line("read", [])], start=0, end=60, step=10, unit="bytes_per_s"))
    assert data_paths(root) == []
    assert "<Disk & I/O>" in "".join(root.itertext())
    assert re.search(r"read \u2013", "".join(root.itertext()))


def test_helpers() -> None:
    assert columns([(0, 1.0), (5, 3.0), (10, 2.0), (99, 9.0)], 0, 10, 2) == [1.0, 3.0]
    assert [nice_ceiling(v) for v in (0, 0.7, 3, 7, 12, 2400)] == [1.0, 1.0, 5.0, 10.0, 20.0, 2500.0]
    assert format_value(1536, "bytes") == "1.5 KiB" and format_value(5 * 2**20, "bytes_per_s") == "5.0 MiB/s"
    assert format_value(3.25, "percent") == "3.2 %" and format_value(None, "count") == "\u2013"
    assert format_value(40, "per_s") == "40/s"
