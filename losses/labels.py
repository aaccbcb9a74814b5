"""Per-anchor label sentinels shared by the losses, the matcher and the criterion.

Foreground anchors carry their class index ``0..K-1``; these two negative values mark the rest.
"""

IGNORE = -1
"""Anchor between the background and foreground IoU thresholds (or on a crowd region): no loss."""

BACKGROUND = -2
"""Negative anchor: every class target is 0."""
