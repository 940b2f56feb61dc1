"""Backends that consume a mapping bundle (never the in-memory IR): ``sim`` and ``rtl``."""
