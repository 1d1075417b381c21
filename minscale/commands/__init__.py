"""Sub-commands of the ``minscale`` CLI, one module each (see :mod:`minscale.cli`)."""
