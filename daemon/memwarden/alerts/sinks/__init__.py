"""Where alert events go: the journal (always), a webhook and an exec hook (when configured)."""
