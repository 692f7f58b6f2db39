"""SHIM-14: moved to tagger.publish.trace."""
from tagger.publish.trace import *  # noqa: F401,F403  SHIM-14
from tagger.publish.trace import MAGIC, VERSION, decode_snapshot, snapshot_record  # noqa: F401  SHIM-14
