"""Dockable panels around the viewer: the study browser, the synthesis panel, the log."""
