"""Triage: the worker, the structured report, the outbox sender."""
