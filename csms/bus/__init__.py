"""bus layer."""
