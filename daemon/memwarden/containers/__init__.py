"""Container memory: leak verdicts per container and the remediation ladder that acts on them."""
