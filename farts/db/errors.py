"""MongoDB errors as exceptions, and the error document a command replies with.

Codes and code names are MongoDB's own (src/mongo/base/error_codes.yml), so drivers raise
the exception class they would raise against a real server (e.g. DuplicateKeyError for 11000).
"""
from __future__ import annotations

BAD_VALUE = 2
FAILED_TO_PARSE = 9
TYPE_MISMATCH = 14
PATH_NOT_VIABLE = 28
DOLLAR_PREFIXED_FIELD_NAME = 52
CONFLICTING_UPDATE_OPERATORS = 40
NOT_SINGLE_VALUE_FIELD = 54
EMPTY_FIELD_NAME = 56
COMMAND_NOT_FOUND = 59
IMMUTABLE_FIELD = 66
INVALID_OPTIONS = 72
INVALID_PIPELINE_OPERATOR = 168
DUPLICATE_KEY = 11000

CODE_NAMES = {
    BAD_VALUE: "BadValue",
    FAILED_TO_PARSE: "FailedToParse",
    TYPE_MISMATCH: "TypeMismatch",
    PATH_NOT_VIABLE: "PathNotViable",
    DOLLAR_PREFIXED_FIELD_NAME: "DollarPrefixedFieldName",
    CONFLICTING_UPDATE_OPERATORS: "ConflictingUpdateOperators",
    NOT_SINGLE_VALUE_FIELD: "NotSingleValueField",
    EMPTY_FIELD_NAME: "EmptyFieldName",
    COMMAND_NOT_FOUND: "CommandNotFound",
    IMMUTABLE_FIELD: "ImmutableField",
    INVALID_OPTIONS: "InvalidOptions",
    INVALID_PIPELINE_OPERATOR: "InvalidPipelineOperator",
    DUPLICATE_KEY: "DuplicateKey",
}


class MongoError(Exception):
    """An error MongoDB would answer with: numeric code, code name and message."""

    def __init__(self, code: int, code_name: str, message: str):
        super().__init__(message)
        self.code = code
        self.code_name = code_name
        self.message = message

    def __repr__(self) -> str:
        return f"MongoError({self.code}, {self.code_name!r}, {self.message!r})"


def error(code: int, message: str, code_name: str | None = None) -> MongoError:
    """A MongoError whose code name comes from the table (Location codes have name 'Location<code>')."""
    return MongoError(code, code_name or CODE_NAMES.get(code, f"Location{code}"), message)


def error_document(e: MongoError) -> dict:
    """The reply body of a failed command, as mongod sends it (with errInfo, keyPattern...
    where the error has details)."""
    return {"ok": 0.0, "errmsg": e.message, "code": e.code, "codeName": e.code_name,
            **(getattr(e, "details", None) or {})}
