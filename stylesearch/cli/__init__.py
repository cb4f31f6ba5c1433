"""Command-line frontend: one `<name>_cmd.py` per command group, each parsing, calling the library and
formatting; main.py assembles them and renders library errors."""
