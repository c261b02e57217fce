"""Pictures and pages: attention maps and overlays."""
