"""The ``smartmixed`` command: the app above ``smartmixed_core``, ``sweeps`` and ``analysis``."""
