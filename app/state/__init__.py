"""The application's view-models in plain Python (no Qt): cursor, display windows, plane
geometry, loaded documents and the comparison. Views subscribe to their events."""
