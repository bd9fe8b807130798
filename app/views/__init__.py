"""The image views: slice planes, the three-plane viewer, the 3D view, the comparison view."""
