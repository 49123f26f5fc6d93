"""whisperwire: real-time speech-to-text over WebSocket."""

__version__ = "0.1.0"
