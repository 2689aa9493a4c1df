"""Tiny SVG charts for Dagster's markdown metadata: no plotting library, no files."""

import base64


def svg_lines(series: dict[str, list[float]], title: str, width: int = 480, height: int = 200) -> str:
    """A markdown image (data URI) with one polyline per series, sharing the axes."""
    values = [v for ys in series.values() for v in ys]
    if not values:
        return f"*{title}: no data*"
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    pad = 24
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    lines = []
    for (name, ys), color in zip(series.items(), colors * (len(series) // len(colors) + 1), strict=False):
        if len(ys) < 2:
            continue
        xs = [pad + i * (width - 2 * pad) / (len(ys) - 1) for i in range(len(ys))]
        heights = [height - pad - (y - low) / span * (height - 2 * pad) for y in ys]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, heights, strict=True))
        style = f'fill="none" stroke="{color}" stroke-width="1.5"'
        lines.append(f'<polyline {style} points="{points}"><title>{name}</title></polyline>')
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{pad}" y="16" font-size="12">{title}</text>'
        f'<text x="2" y="{pad + 4}" font-size="10">{high:.3g}</text>'
        f'<text x="2" y="{height - pad}" font-size="10">{low:.3g}</text>' + "".join(lines) + "</svg>"
    )
    return f"![{title}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"
