"""Testing kit shipped with facedefense so plugin authors reuse it.

- [`facedefense.testing.tiny_models`][facedefense.testing.tiny_models]: tiny random-weight diffusers models
  built offline and saved with ``save_pretrained`` (so they load through the same ``from_pretrained`` path as
  real ones).
- [`facedefense.testing.fixtures`][facedefense.testing.fixtures]: pytest fixtures
  (``pytest_plugins = ["facedefense.testing.fixtures"]``).
- [`facedefense.testing.contracts`][facedefense.testing.contracts]: contract-test mixins every method's tests
  subclass.
"""
