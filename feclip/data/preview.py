"""Preview grid of one HDMAP domain folder (real or synthetic), like the EDA figures.

Rows: train normal, test good cold, test good warm, test fault cold, test fault warm; a few evenly spaced
files per row. All panels share one colour scale (0 .. the 99.5th percentile of the shown pixels unless `vmax`
is given; brighter pixels saturate) with a colour bar. Built without pyplot on the Agg canvas (no global
figure state, no display needed). When the folder holds the synthetic sidecar
(`synthetic_meta.csv`), each fault panel gets red ticks at its fault row on both sides.

    python -m feclip.data.preview --root data/hdmap_synth --domain C --out preview_C.png [--per-row 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from feclip.data.hdmap import HDMAPData, load_domain
from feclip.data import synthetic
from feclip.data.synthetic import SIDECAR

ROWS = (  # (row title, split, label, condition)
    ("train normal", "train", 0, "none"),
    ("test good cold", "test", 0, "cold"),
    ("test good warm", "test", 0, "warm"),
    ("test fault cold", "test", 1, "cold"),
    ("test fault warm", "test", 1, "warm"),
)


def fault_rows(root, domain: str) -> dict[int, int]:
    """Synthetic sidecar fault rows of the domain's test faults: file index -> row ({} without a sidecar)."""
    path = Path(root) / SIDECAR
    if not path.exists():
        return {}
    meta = pd.read_csv(path)
    faults = meta[(meta["domain"] == domain) & (meta["split"] == "test") & (meta["label"] == 1)]
    return dict(zip(faults["file_index"].astype(int), faults["fault_row"].astype(int), strict=True))


def pick_rows(meta: pd.DataFrame, per_row: int) -> list[np.ndarray]:
    """Positions (into meta) of up to `per_row` evenly spaced files of each preview row, in ROWS order."""
    picks = []
    for _, split, label, condition in ROWS:
        group = np.nonzero(
            (
                (meta["split"] == split) & (meta["label"] == label) & (meta["condition"] == condition)
            ).to_numpy()
        )[0]
        picks.append(group[np.linspace(0, len(group) - 1, min(per_row, len(group))).round().astype(int)])
    return picks


def preview_figure(
    data: HDMAPData,
    title: str,
    rows: dict[int, int] | None = None,
    per_row: int = 6,
    vmax: float | None = None,
) -> Figure:
    """The preview grid of `data` (one domain): len(ROWS) rows × per_row panels, one shared colour scale."""
    picks = pick_rows(data.meta, per_row)
    images = data.images.detach().float().cpu().numpy()  # (N, H, W)
    shown = np.concatenate([images[p] for p in picks if len(p)])
    vmax = float(np.percentile(shown, 99.5)) if vmax is None else vmax
    height, width = images.shape[1:]
    panel = 2.6  # inches per panel width; panel height follows the (31, 95) aspect plus a title line
    fig = Figure(
        figsize=(panel * per_row + 2.2, len(ROWS) * (panel * height / width + 0.3) + 0.5),
        layout="constrained",
    )
    axes = fig.subplots(len(ROWS), per_row, squeeze=False)
    for (name, *_), positions, row_axes in zip(ROWS, picks, axes, strict=True):
        row_axes[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax, position in zip(row_axes, positions, strict=False):
            shown_image = ax.imshow(images[position], cmap="inferno", vmin=0.0, vmax=vmax, aspect="equal")
            file_index = int(data.meta["file_index"].iloc[position])
            ax.set_title(f"{file_index:06d}  max {images[position].max():.2f}", fontsize=6, pad=2)
            fault_row = (rows or {}).get(file_index) if data.meta["label"].iloc[position] == 1 else None
            if fault_row is not None and fault_row >= 0:
                for x, marker in ((-2.0, ">"), (width + 1.0, "<")):
                    ax.plot([x], [fault_row], marker, color="red", ms=5, clip_on=False)
                ax.set_xlim(-0.5, width - 0.5)  # keep the panel on the image, ticks outside
                ax.set_ylim(height - 0.5, -0.5)
    colorbar = fig.colorbar(shown_image, ax=axes, shrink=0.8, extend="max", pad=0.02)
    colorbar.set_label("raw value (shared scale)", fontsize=8)
    fig.suptitle(title + ("  (red ticks: fault row)" if rows else ""), fontsize=9)
    return fig


def render_preview(root, domain: str, out, per_row: int = 6, vmax: float | None = None) -> Path:
    """Write the preview PNG of `<root>/domain_<domain>` to `out`; returns the path."""
    data = load_domain(root, domain, cold_warm_split=synthetic.cold_warm_split(root))
    title = f"HDMAP domain {domain}: {root}"
    fig = preview_figure(data, title, fault_rows(root, domain), per_row, vmax)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--per-row", type=int, default=6)
    parser.add_argument("--vmax", type=float, default=None, help="top of the colour scale (default: p99.5)")
    args = parser.parse_args(argv)
    print(render_preview(args.root, args.domain, args.out, args.per_row, args.vmax))


if __name__ == "__main__":
    main()
