"""The link emulator: a trace-driven TCP proxy that shapes the real byte stream between device
and server (``shaper``), its traces (``traces``), its plaintext request log (``sniff``) and its
process (``main``: ``semlink link``)."""
