"""Published checkpoints into this collection's bundles (``tools/import_weights.py``).

- ``publisher``: reads a publisher's file the way it is published (a state dict, MONAI's ``{"model": ...}``, or a
  whole pickled network only when the user allows full unpickling) and checks it against the expected keys.
- ``sources``: what each supported publication is, which bundle and override config runs it, and how its keys,
  outputs and labels map onto the bundle's network.
"""
