"""Workarounds for broken third-party installs."""
