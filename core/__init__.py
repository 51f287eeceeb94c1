"""The shared classify-and-route core: domain types, ports and the Pipeline; no transport or database code."""
