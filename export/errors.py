"""The one exception for bad export artefacts and engine sets.

Its message is a single line naming the file and the field at fault, so a CLI can print it to
stderr as is and exit with code 2 (the project's rule for bad user input).
"""


class ExportError(ValueError):
    """A graph, engine or manifest cannot be used: the message names the file and field."""
