"""history.png: loss and metric curves of one or more runs (matplotlib, an optional extra)."""

from __future__ import annotations

from pathlib import Path

from dlrun.atomic import atomic_open
from dlrun.errors import DlrunError


def plot_history(histories: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Loss and metric curves (training solid, validation dashed), one panel per quantity.

    Needs matplotlib (`pip install 'dlrun[plot]'`); raises ImportError otherwise. Raises DlrunError
    for a run with no finished epoch (history.json is `{}` until the first epoch ends).
    """
    for label, history in histories.items():
        if not any(v for k, v in history.items() if k != "learning_rate"):
            raise DlrunError(
                f"run {label} has no finished epoch to plot yet",
                hint="plot it after its first epoch ends (dlrun runs shows its epochs)",
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    quantities = sorted(
        {k for h in histories.values() for k in h if not k.startswith("val_") and k != "learning_rate"},
        key=lambda k: (k != "loss", k),
    )
    fig, axes = plt.subplots(1, len(quantities), figsize=(5 * len(quantities), 3.6), squeeze=False)
    for ax, key in zip(axes[0], quantities):
        for label, history in histories.items():
            for k, style in ((key, "-"), (f"val_{key}", "--")):
                if k in history:
                    epochs = range(1, len(history[k]) + 1)
                    prefix = f"{label} " if len(histories) > 1 else ""
                    ax.plot(epochs, history[k], style, marker="o", markersize=3, label=f"{prefix}{k}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
