"""A flame graph SVG from collapsed stacks (``frame;frame;frame count`` per line).

py-spy draws its SVG only while it records; recording raw stacks keeps the profile
readable as text (bench/profile.py sums it) and this renders the same data as a picture.
"""

from __future__ import annotations

from html import escape

ROW = 16
WIDTH = 1600


class _Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[str, _Node] = {}


def _tree(collapsed: str) -> _Node:
    root = _Node()
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        node = root
        node.count += n
        for frame in stack.split(";"):
            node = node.children.setdefault(frame, _Node())
            node.count += n
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str) -> str:
    h = sum(name.encode()) % 60
    return f"rgb({205 + h % 50},{80 + h * 2},{40 + h % 30})"


def render(collapsed: str, title: str = "profile") -> str:
    """The SVG text: the root at the bottom, each frame as wide as its samples."""
    root = _tree(collapsed)
    depth = _depth(root)
    height = (depth + 2) * ROW
    scale = WIDTH / root.count if root.count else 0.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="monospace" font-size="11">',
        f'<text x="4" y="12">{escape(title)}: {root.count} samples</text>',
    ]

    def draw(node: _Node, name: str, x: float, level: int) -> None:
        w = node.count * scale
        if w < 0.5:
            return
        y = height - (level + 1) * ROW
        share = 100 * node.count / root.count
        label = f"{name} ({node.count} samples, {share:.1f} %)"
        out.append(
            f'<g><title>{escape(label)}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
            f'height="{ROW - 1}" fill="{_colour(name)}"/>'
        )
        chars = int(w / 7)
        if chars > 3:
            text = name if len(name) <= chars else name[: chars - 1] + "…"
            out.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 4}">{escape(text)}</text>')
        out.append("</g>")
        child_x = x
        for child_name, child in sorted(node.children.items()):
            draw(child, child_name, child_x, level + 1)
            child_x += child.count * scale

    draw(root, "all", 0.0, 0)
    out.append("</svg>")
    return "\n".join(out)
