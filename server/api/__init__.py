"""HTTP routes of the native ``/v1`` protocol (``docs/protocol.md``); thin: services do the work."""
