"""One schema per section of a rules file: ``macros``, ``rules`` (with their
``match`` selectors and ``actions``) and ``policies``, plus the warnings that
need the whole directory (``crosscheck``).  Each reads YAML nodes through
:class:`tagger.rules.yamlnode.Reader` and builds the types of
:mod:`tagger.rules.spec`."""
