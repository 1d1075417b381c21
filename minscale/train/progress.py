"""What a fit call prints: the tqdm progress bar and the per-epoch lines (rank 0 only)."""
from __future__ import annotations

import sys

# internal to the training loops
__all__ = []


def progress_bar(enabled, total):
    """A tqdm bar of `total` steps on stderr when `enabled` and stderr is a terminal, else None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # noqa: PLC0415  (optional third-party, only for a terminal)
    return tqdm(total=total, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)


def report_epoch(bar, epoch, epochs, logs, verbose):
    """Show one epoch's logs: on the bar (and a line above it at verbose >= 2), else one line."""
    text = " - ".join(f"{k} {v:.6g}" for k, v in logs.items())
    if bar is not None:
        bar.set_postfix_str(text)
        if verbose >= 2:
            bar.write(f"epoch {epoch + 1}/{epochs} - {text}")
    else:
        print(f"epoch {epoch + 1}/{epochs} - {text}", flush=True)
