"""Tables and PNG plots of the evaluations (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def format_table(title: str, key_name: str, rows: dict, columns: list[tuple[str, str, str]]) -> str:
    """A fixed-width table: one row per key of ``rows``; ``columns`` are (header, path, stat) picks
    from ``rows[key][path][stat]``."""
    headers = [key_name] + [header for header, _, _ in columns]
    widths = [max(8, len(h)) for h in headers]
    lines = [title, "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    for key, by_path in rows.items():
        cells = [str(key)] + [f"{by_path[path][stat]:.4g}" for _, path, stat in columns]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def _by_key(per_path: dict[str, dict]) -> dict:
    """``{path: {key: stats}}`` -> ``{key: {path: stats}}`` (keys in the first path's order)."""
    first = next(iter(per_path.values()))
    return {key: {path: values[key] for path, values in per_path.items()} for key in first}


def deviation_tables(results: dict) -> str:
    """The delta sweep (D and the first token's share of it) and the growth with T (D_first), per mode."""
    out = []
    for mode, per_path in results["sweep"].items():
        paths = list(per_path)
        columns = [(f"D {p}", p, "D") for p in paths]
        columns += [(f"first_share {p}", p, "first_share") for p in paths]
        out.append(
            format_table(
                f"delta1 sweep against delta2=16, {mode} attention", "delta1", _by_key(per_path), columns
            )
        )
    for mode, per_path in results["growth"].items():
        paths = list(per_path)
        columns = [(f"D_first {p}", p, "D_first") for p in paths] + [(f"D {p}", p, "D") for p in paths]
        out.append(
            format_table(
                f"first-token deviation as T grows (delta 0 against 16), {mode} attention",
                "T",
                _by_key(per_path),
                columns,
            )
        )
    return "\n\n".join(out)


def plot_deviation(results: dict, out_dir: Path) -> list[Path]:
    """Two PNGs: D against delta1, and D_first against T; one panel per attention mode, a line per path."""
    plt = _pyplot()
    written = []
    for part, stat, xlabel in (("sweep", "D", "delta1"), ("growth", "D_first", "T")):
        modes = list(results[part])
        fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
        for ax, mode in zip(axes[0], modes, strict=True):
            for path, values in results[part][mode].items():
                # Exact zeros (delta1 == delta2, or an fp32 tie) have no place on a log scale: leave gaps.
                ys = [values[x][stat] or float("nan") for x in values]
                ax.plot([int(x) for x in values], ys, marker=".", label=path)
            ax.set(title=f"{mode} attention", xlabel=xlabel, ylabel=stat, yscale="log")
            if part == "sweep":
                ax.set_xscale("symlog", linthresh=32)  # 0..22 stay readable beside 50..2000
                ax.set_xlim(left=0)
                ax.axvline(16, color="grey", linestyle=":", label="delta2 = 16")
            else:
                ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.suptitle(f"RoPE relative-position deviation: {stat} (reference delta2 = 16)")
        fig.tight_layout()
        path = out_dir / f"rope_deviation_{part}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_heatmap(
    accuracy: list[list[float]], lengths: list[int], depths: list[float], path: Path, title: str
) -> Path:
    """A depth x length heatmap of accuracies in [0, 1], each cell annotated."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.6 * len(depths) + 2))
    grid = [[accuracy[i][j] for i in range(len(lengths))] for j in range(len(depths))]  # [depth][length]
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set(xlabel="context length (tokens)", ylabel="passkey depth", title=title)
    for j, row in enumerate(grid):
        for i, value in enumerate(row):
            ax.text(i, j, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
