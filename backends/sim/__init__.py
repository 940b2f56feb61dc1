"""Bit-accurate simulator of a mapping bundle."""
