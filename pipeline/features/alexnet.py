"""Placeholder: filled in by the features work."""
