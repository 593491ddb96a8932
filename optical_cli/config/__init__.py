"""Configs: typed schemas (pydantic v2), strict YAML, ``--set`` overrides and what a resume may change.

``schema`` (the base every schema builds on) and ``sections`` (sections several jobs read); each job's own
schema lives beside the job (``bench/config.py``, ``index/config.py``, ...). ``files`` reads YAML with line
numbers, ``validation`` turns it into a schema with errors that name file, line and key, ``registry`` says
which schema each command reads and loads it, ``resume`` compares a run's settings with a resume's.
"""
