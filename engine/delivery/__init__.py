"""Outbound HTTP: address checks, Standard Webhooks signatures, onRequest and onError hooks."""
