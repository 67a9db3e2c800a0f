"""Compiled hot paths (Cython). Small, typed, no I/O, no asyncio; nothing here imports farts."""
