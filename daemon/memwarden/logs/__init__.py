from memwarden.logs.setup import configure_logging, get_logger

__all__ = ["configure_logging", "get_logger"]
