"""Where the demo model shipped with the package lives (no torch import: the node's
supervisor resolves it before loading anything)."""

from pathlib import Path

SHIPPED = Path("weights") / "ichnet_demo.pt"  # relative to the ml package


def shipped_checkpoint() -> Path:
    """Path of the demo model shipped inside the `ml` package."""
    return Path(__file__).resolve().parent / SHIPPED
