"""The MongoDB-compatible database: wire protocol, LMDB store and the pure-Python query/update engine."""
