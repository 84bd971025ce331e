"""PNG bar chart of the per-step stage medians, one stacked bar per backend, drawn with Pillow
(already a runtime dependency) so that no plotting library is needed."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")
WIDTH, BAR_HEIGHT, LEFT, RIGHT, TOP = 960, 34, 130, 80, 56


def _nice_step(span: float) -> float:
    """A 1/2/5 × 10^k tick spacing giving about 5 ticks over `span`."""
    raw = span / 5
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def write_plot(doc: dict, path: Path) -> Path:
    backends = [b for b in doc["backends"] if b["status"] == "ok"]
    stages = [n for n in dict.fromkeys(n for b in backends for n in b["stages"]) if n != "step"]
    total = max(sum(b["stages"][n]["median_ms"] for n in stages if n in b["stages"]) for b in backends)
    total = max(total, 1e-3)
    plot_w = WIDTH - LEFT - RIGHT
    legend_rows = math.ceil(len(stages) / 4)
    height = TOP + len(backends) * (BAR_HEIGHT + 14) + 40 + legend_rows * 20 + 16
    img = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    s = doc["settings"]
    draw.text((LEFT, 10), f"ort3d per-step stage medians (ms): preset {s['preset']}, dtype {s['dtype']}, "
              f"{s['steps']} steps", fill="black", font=font)
    draw.text((LEFT, 26), doc["environment"]["device_name"], fill="#555555", font=font)

    scale = plot_w / total
    y = TOP
    for b in backends:
        draw.text((8, y + BAR_HEIGHT // 2 - 6), b["name"], fill="black", font=font)
        x = LEFT
        for i, name in enumerate(stages):
            ms = b["stages"].get(name, {}).get("median_ms", 0.0)
            w = ms * scale
            if w > 0:
                draw.rectangle([x, y, x + w, y + BAR_HEIGHT], fill=COLOURS[i % len(COLOURS)])
            x += w
        draw.text((x + 4, y + BAR_HEIGHT // 2 - 6), f"{(x - LEFT) / scale:.1f}", fill="black", font=font)
        y += BAR_HEIGHT + 14

    draw.line([LEFT, y, LEFT + plot_w, y], fill="black")
    step = _nice_step(total)
    tick = 0.0
    while tick <= total * 1.0001:
        tx = LEFT + tick * scale
        draw.line([tx, y, tx, y + 4], fill="black")
        draw.text((tx - 8, y + 6), f"{tick:g}", fill="black", font=font)
        tick += step
    y += 30
    for i, name in enumerate(stages):
        lx, ly = LEFT + (i % 4) * 190, y + (i // 4) * 20
        draw.rectangle([lx, ly, lx + 12, ly + 12], fill=COLOURS[i % len(COLOURS)])
        draw.text((lx + 18, ly), name, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
