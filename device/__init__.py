"""The device runtime: HTTP front, the controllers, the client of the server, the channel monitor,
metrics and dashboard (``semlink device``)."""
