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
    return _markdown_image(svg, title)


def svg_bars(counts: list[int], edges: list[float], title: str, width: int = 480, height: int = 200) -> str:
    """A markdown image (data URI) of a histogram: `counts[i]` between `edges[i]` and `edges[i + 1]`."""
    if not counts or not max(counts):
        return f"*{title}: no data*"
    pad, top = 24, max(counts)
    bar = (width - 2 * pad) / len(counts)
    bars = []
    for i, count in enumerate(counts):
        tall = count / top * (height - 2 * pad)
        x, y = pad + i * bar, height - pad - tall
        tip = f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {count}"
        shape = f'x="{x:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" height="{tall:.1f}" fill="#1f77b4"'
        bars.append(f"<rect {shape}><title>{tip}</title></rect>")
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{pad}" y="16" font-size="12">{title}</text>'
        f'<text x="{pad}" y="{height - 6}" font-size="10">{edges[0]:.3g}</text>'
        f'<text x="{width - pad - 24}" y="{height - 6}" font-size="10">{edges[-1]:.3g}</text>'
        f'<text x="2" y="{pad + 4}" font-size="10">{top}</text>' + "".join(bars) + "</svg>"
    )
    return _markdown_image(svg, title)


def _markdown_image(svg: str, title: str) -> str:
    return f"![{title}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"
