"""Tiny SVG charts for Dagster's markdown metadata: no plotting library, no files."""

import base64

PAD = 24
"""Margin around the plot area, in pixels."""


def svg_lines(series: dict[str, list[float]], title: str, width: int = 480, height: int = 200) -> str:
    """A markdown image (data URI) with one polyline per series, sharing the axes."""
    values = [v for ys in series.values() for v in ys]
    if not values:
        return f"*{title}: no data*"
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    lines = []
    for (name, ys), color in zip(series.items(), colors * (len(series) // len(colors) + 1), strict=False):
        if len(ys) < 2:
            continue
        xs = [PAD + i * (width - 2 * PAD) / (len(ys) - 1) for i in range(len(ys))]
        heights = [height - PAD - (y - low) / span * (height - 2 * PAD) for y in ys]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, heights, strict=True))
        style = f'fill="none" stroke="{color}" stroke-width="1.5"'
        lines.append(f'<polyline {style} points="{points}"><title>{name}</title></polyline>')
    axis = f'<text x="2" y="{height - PAD}" font-size="10">{low:.3g}</text>'
    return _image(title, width, height, f"{high:.3g}", axis + "".join(lines))


def svg_bars(counts: list[int], edges: list[float], title: str, width: int = 480, height: int = 200) -> str:
    """A markdown image (data URI) of a histogram: `counts[i]` between `edges[i]` and `edges[i + 1]`."""
    if not counts or not max(counts):
        return f"*{title}: no data*"
    top = max(counts)
    bar = (width - 2 * PAD) / len(counts)
    body = [
        f'<text x="{PAD}" y="{height - 6}" font-size="10">{edges[0]:.3g}</text>',
        f'<text x="{width - PAD - 24}" y="{height - 6}" font-size="10">{edges[-1]:.3g}</text>',
    ]
    for i, count in enumerate(counts):
        tall = count / top * (height - 2 * PAD)
        shape = f'x="{PAD + i * bar:.1f}" y="{height - PAD - tall:.1f}" width="{bar - 1:.1f}" height="{tall:.1f}"'
        body.append(f'<rect {shape} fill="#1f77b4"><title>{edges[i]:.3g} to {edges[i + 1]:.3g}: {count}</title></rect>')
    return _image(title, width, height, str(top), "".join(body))


def _image(title: str, width: int, height: int, top_label: str, body: str) -> str:
    """The chart frame (background, title, top-of-axis label) around `body`, as a markdown data-URI image."""
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{PAD}" y="16" font-size="12">{title}</text>'
        f'<text x="2" y="{PAD + 4}" font-size="10">{top_label}</text>{body}</svg>'
    )
    return f"![{title}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"
