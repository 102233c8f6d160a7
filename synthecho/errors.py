"""The one exception type users see.

Library code raises `SynthechoError` for bad input (a missing file, a malformed key, a wrong recipe value).
The message names the file or key and says what to change; the CLI prints it without a traceback and
exits with status 2. Anything else escaping is a bug and keeps its traceback.
"""


class SynthechoError(Exception):
    """Bad input or state, with a message that names the file/key and the fix."""
