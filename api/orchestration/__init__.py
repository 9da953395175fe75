"""Orchestration above ordinary tasks: pipelines, retries and dead letters, schedules.

Built only on the store's verbs (api/store), so any backend with the same verbs runs it. Every
worker runs the same loop (loop.py); store transactions and leases decide who acts.
"""
