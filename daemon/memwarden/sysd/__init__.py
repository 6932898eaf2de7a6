"""systemd integration: sd_notify and socket activation."""
