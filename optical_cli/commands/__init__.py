"""One module per command group: parse the flags, call the domain, report."""
