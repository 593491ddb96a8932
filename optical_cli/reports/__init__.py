"""The CLI's report printers: a command's results as tables and lines on stderr (``console``: the shared
output helpers). CLI layer: only commands import these, and these import no command."""
