"""Step modules; importing one registers its steps."""
