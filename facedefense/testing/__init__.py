"""Testing kit shipped with facedefense so plugin authors reuse it.

- :mod:`facedefense.testing.tiny_models`: tiny random-weight diffusers models built offline and
  saved with ``save_pretrained`` (so they load through the same ``from_pretrained`` path as real ones).
- :mod:`facedefense.testing.fixtures`: pytest fixtures (``pytest_plugins = ["facedefense.testing.fixtures"]``).
- :mod:`facedefense.testing.contracts`: contract-test mixins every method's tests subclass.
"""
