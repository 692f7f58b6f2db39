"""tagger top: the live, top-like view."""
