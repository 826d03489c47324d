"""The data-plane server: supervisor, workers, the HTTP protocol and send path."""
