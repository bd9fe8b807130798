"""SynerMedGen engine: everything that computes. Never imports Qt, pyqtgraph or VTK."""
