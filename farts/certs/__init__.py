"""Certificates from an ACME CA (RFC 8555): orders, HTTP-01 answers, renewal (see service.py)."""
