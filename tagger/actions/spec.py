from tagger.rules.spec import *  # SHIM-14
