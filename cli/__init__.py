"""tagger's front ends: click commands and the live view (installed as tagger.cli)."""
