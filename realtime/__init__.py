"""The live app: capture, tracking, the double-buffered generator, sinks."""
