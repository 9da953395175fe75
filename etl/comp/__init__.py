"""Completeness control: reconcile a source against a target, explain and age the breaks."""
