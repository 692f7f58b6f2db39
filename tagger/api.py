"""SHIM-14: moved to tagger.publish.socket (server), tagger.client (client) and tagger.publish.wire (frames)."""
from tagger.client import *  # noqa: F401,F403  SHIM-14
from tagger.publish.socket import *  # noqa: F401,F403  SHIM-14
from tagger.publish.socket import MAX_GLOB_CHARS  # noqa: F401  SHIM-14
from tagger.publish.wire import DEFAULT_SOCKET, HEADER, encode_frame  # noqa: F401  SHIM-14
