"""JSON Schemas shipped with bitsearch."""
