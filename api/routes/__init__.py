"""HTTP routes: thin handlers that parse, call the store/runner, and shape the answer."""
