"""Developer tools: not part of the churnops package (README screenshots)."""
